"""What `gunctl train --mlflow` costs: the tracker's time per epoch against the epoch's time.

Trains the default recipe (what `gunctl train` runs) for --epochs epochs on --subset demo
images with the MLflow tracker (embedded SQLite store), timing each of the tracker's hooks
from inside the run: the per-epoch cost (metrics to the store) is divided by the epoch's
wall time, which is the figure that matters on a shared machine (two runs compared end to
end differ by more than the cost itself at load 8). The one-time costs (store set-up and
run creation at the start; artifacts and the PyTorch-flavour model at the end) are
reported apart.

    .venv/bin/python benchmarks/bench_mlflow.py [--epochs 3] [--subset 20] [--tiny] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Timed:
    """Wraps a callback; records the seconds each hook took."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, {}

    def __getattr__(self, hook):
        method = getattr(self.inner, hook)

        def timed(*args):
            began = time.perf_counter()
            try:
                return method(*args)
            finally:
                took = time.perf_counter() - began
                self.seconds.setdefault(hook, []).append(took)
                if hook == "on_epoch_end":  # as it goes: a run cut short still tells
                    epoch = args[1]
                    share = 100 * took / epoch["seconds"]
                    print(
                        f"epoch {epoch['epoch']}: {epoch['seconds']:.1f} s, tracker {took:.3f} s "
                        f"({share:.2f} %)",
                        flush=True,
                    )

        return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=20)
    parser.add_argument(
        "--tiny", action="store_true", help="the tests' tiny model at 64 px (an upper bound)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import dataclasses

    from gunctl.config import IngestConfig, Layout, ModelConfig, SplitConfig, TrainConfig
    from gunctl.core.checkpoint import load_checkpoint
    from gunctl.core.ingest import ingest
    from gunctl.core.split import create_split
    from gunctl.core.tracking import MlflowTracker
    from gunctl.core.trainer import fit

    with tempfile.TemporaryDirectory(prefix="gunctl-bench-mlflow-") as tmp:
        layout = Layout(Path(tmp) / "artifacts")
        ingest(IngestConfig(source="demo", layout=layout))
        create_split(SplitConfig(layout=layout))
        config = TrainConfig(
            layout=layout, epochs=args.epochs, subset=args.subset, mlflow=True, run_name="b"
        )
        if args.tiny:  # an epoch of seconds: the same per-epoch logging weighs the most
            model = ModelConfig(
                name="fasterrcnn_mobilenet_v3_large_320_fpn", weights="none", min_size=64,
                max_size=96, box_head_dim=64,
            )  # fmt: skip
            config = dataclasses.replace(
                config, model=model, recipe="plain", batch_size=4, workers=0, lr=1e-3
            )
        tracker = Timed(MlflowTracker(layout))
        began = time.perf_counter()
        result = fit(config, [tracker])
        wall = time.perf_counter() - began
        model = load_checkpoint(result.last_checkpoint)["config"]["model"]["name"]
    epochs = [record["seconds"] for record in result.history]
    per_epoch = tracker.seconds["on_epoch_end"]
    shares = [100 * t / e for t, e in zip(per_epoch, epochs, strict=True)]
    report = {
        "model": model,
        "epochs": len(epochs),
        "train_images": result.train_images,
        "epoch_seconds": epochs,
        "tracker_epoch_seconds": per_epoch,
        "overhead_percent_per_epoch": shares,
        "start_seconds": tracker.seconds["on_fit_start"][0],
        "end_seconds": tracker.seconds["on_fit_end"][0],
        "run_wall_seconds": wall,
    }
    print(f"{model}, {result.train_images} training images")
    print(f"{'epoch':>5} {'epoch s':>8} {'tracker s':>9} {'overhead %':>10}")
    for index, (e, t, s) in enumerate(zip(epochs, per_epoch, shares, strict=True), 1):
        print(f"{index:>5} {e:>8.1f} {t:>9.3f} {s:>10.2f}")
    print(f"median overhead per epoch: {statistics.median(shares):.2f} %")
    print(
        f"once: start {report['start_seconds']:.2f} s (store and run), end "
        f"{report['end_seconds']:.2f} s (artifacts and model); run wall {wall:.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
