"""The data-side defaults, one at a time: training images/s of gunctl's default model on the
real sample with each default switched off (or on) and everything else as it is.

    default        workers 2 (persistent), no RAM cache, aspect-ratio grouping, 2 threads
    workers0       --workers 0: decoding in the training process
    cache_ram      --cache ram: images decoded once, before the first epoch
    no_grouping    batches mix portrait and landscape images
    threads1       torch.set_num_threads(1)

Each variant runs in its own process: one epoch of `--images` training images (the first
`--warmup` steps untimed), timed by a callback on each step. Prints a table and the ratio of
each variant to the default.

    .venv/bin/python benchmarks/bench_defaults.py --json defaults.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "default": {},
    "workers0": {"workers": 0},
    "cache_ram": {"cache": "ram"},
    "no_grouping": {"group_aspect_ratios": False},
    "threads1": {"threads": 1},
}


def main() -> int:
    args = parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory(prefix="gunctl-bench-defaults-") as tmp:
        root = Path(tmp) / "artifacts"
        prepare(Path(args.data), root)
        rows = [run_variant(name, root, args) for name in args.variants]
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "guns-sample"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--images", type=int, default=32, help="training images in the epoch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def prepare(source: Path, root: Path) -> None:
    from gunctl.config import IngestConfig, Layout, SplitConfig
    from gunctl.core.ingest import ingest
    from gunctl.core.split import create_split

    layout = Layout(root)
    ingest(IngestConfig(source=str(source), layout=layout))
    create_split(SplitConfig(layout=layout))


def run_variant(name: str, root: Path, args) -> dict:
    print(f"{name} ...", flush=True)
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--root",
        str(root),
        "--images",
        str(args.images),
        "--warmup",
        str(args.warmup),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return {"variant": name, "error": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args) -> int:
    import dataclasses
    import logging
    import time

    import torch

    from gunctl.config import Layout, ModelConfig, TrainConfig
    from gunctl.core.callbacks import Callback
    from gunctl.core.trainer import fit

    logging.getLogger("gunctl").setLevel(logging.ERROR)
    options = dict(VARIANTS[args.worker])
    if "threads" in options:
        torch.set_num_threads(options.pop("threads"))
    steps: list[tuple[float, int]] = []

    class Timer(Callback):
        def on_step_end(self, state, step):
            steps.append((step.seconds, step.images))

    config = TrainConfig(
        model=ModelConfig(weights="none"),
        layout=Layout(Path(args.root)),
        epochs=1,
        log_images=0,
        run_name=f"v-{args.worker}",
        recipe="plain",  # gunctl's settings when these figures were taken (before recipes)
    )
    val_fraction = 0.2
    subset = round(args.images / (1 - val_fraction))
    config = dataclasses.replace(config, subset=subset, **options)
    started = time.perf_counter()
    fit(config, [Timer()])
    timed = steps[args.warmup :]
    seconds = sum(s for s, _ in timed)
    images = sum(n for _, n in timed)
    print(
        json.dumps(
            {
                "variant": args.worker,
                "images": images,
                "seconds": round(seconds, 2),
                "images_per_s": images / seconds,
                "wall_s": time.perf_counter() - started,
            }
        )
    )
    return 0


def print_table(rows: list[dict]) -> None:
    base = next((r["images_per_s"] for r in rows if r.get("variant") == "default"), None)
    print(f"{'variant':<12} {'images':>6} {'img/s':>6} {'vs default':>10} {'wall s':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<12} failed ({r['error']})")
            continue
        ratio = f"{r['images_per_s'] / base:.3f}" if base else "-"
        print(
            f"{r['variant']:<12} {r['images']:>6} {r['images_per_s']:>6.2f} {ratio:>10} "
            f"{r['wall_s']:>7.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
