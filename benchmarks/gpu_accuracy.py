"""Val mAP@0.5 on the real sample, before and after gunctl's compute-saving defaults.

Trains fasterrcnn_resnet50_fpn from scratch (no pretrained weights can be downloaded here)
under the same budget (epochs, batch, optimizer, schedule, seed) for each configuration:

  torchvision  torchvision's defaults: min_size 800, max_size 1333, 2000/2000 proposals,
               512 RoIs per image (the original pipeline's settings)
  gunctl320    gunctl's proposal and RoI counts (600/300 proposals, 128 RoIs) at 320/544 px
  res320       320/544 px with torchvision's proposal and RoI counts
  gunctl256    gunctl's counts at 256/448 px: gunctl's defaults
  gunctl224    gunctl's counts at 224/384 px

and prints best and final val mAP@0.5, mAP@0.5:0.95, training images/s and wall time, so
that each change of what is computed is reported with its effect on accuracy. Meant for a
GPU (about 1 minute per configuration on an H100 at 20 epochs); `--quick` runs a tiny
version on the CPU to check the code path. Results go to stdout and, with --json, to a file.

    python benchmarks/gpu_accuracy.py --data ../shared/data/guns-sample --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TORCHVISION_COUNTS  # noqa: E402

from gunctl.config import IngestConfig, Layout, ModelConfig, SplitConfig, TrainConfig  # noqa: E402

CONFIGS = {
    "gunctl320": ModelConfig(weights="none", min_size=320, max_size=544),
    "torchvision": ModelConfig(weights="none", min_size=800, max_size=1333, **TORCHVISION_COUNTS),
    "res320": ModelConfig(weights="none", **TORCHVISION_COUNTS),
    "gunctl256": ModelConfig(weights="none", min_size=256, max_size=448),
    "gunctl224": ModelConfig(weights="none", min_size=224, max_size=384),
}


def main() -> int:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="gunctl-accuracy-"))
    layout = prepare_data(Path(args.data), root)
    results = []
    started = time.perf_counter()
    for name in args.configs:
        if time.perf_counter() - started > args.max_seconds:
            print(f"skipping {name}: over the --max-seconds budget", flush=True)
            continue
        model = CONFIGS[name]
        if args.quick:
            model = replace(
                model, name="fasterrcnn_mobilenet_v3_large_320_fpn", min_size=128, max_size=224
            )
        results.append(run(name, model, layout, args))
        report(results, args.json)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/guns-sample")
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-seconds", type=float, default=1e9)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny CPU run: checks the code path")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.workers, args.device = 1, 0, "cpu"
    return args


def prepare_data(source: Path, root: Path) -> Layout:
    from gunctl.core.ingest import ingest
    from gunctl.core.split import create_split

    layout = Layout(root / "artifacts")
    ingest(IngestConfig(source=str(source), layout=layout))
    create_split(SplitConfig(layout=layout))
    return layout


def run(name: str, model: ModelConfig, layout: Layout, args) -> dict:
    from gunctl.core.trainer import fit

    config = TrainConfig(
        recipe="plain",  # the settings compared here, not a recipe's
        model=model,
        layout=layout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
        device=args.device,
        cache="ram",
        run_name=name,
        log_images=0,
        subset=12 if args.quick else None,
    )
    print(
        f"== {name}: {model.name} {model.min_size}/{model.max_size} px, "
        f"{model.rpn_post_nms_top_n_train} proposals, {model.box_batch_size_per_image} RoIs",
        flush=True,
    )
    tick = time.perf_counter()
    result = fit(config)
    seconds = time.perf_counter() - tick
    history = result.history
    maps = [r["val"]["map_50"] or 0.0 for r in history]
    images = sum(r["train"]["images"] for r in history)
    train_seconds = sum(r["train"]["seconds"] for r in history)
    row = {
        "config": name,
        "min_size": model.min_size,
        "proposals_train": model.rpn_post_nms_top_n_train,
        "rois": model.box_batch_size_per_image,
        "epochs": len(history),
        "best_map50": max(maps),
        "final_map50": maps[-1],
        "final_map": history[-1]["val"]["map"],
        "map50_per_epoch": [round(m, 4) for m in maps],
        "train_images_per_s": images / train_seconds,
        "wall_seconds": seconds,
    }
    print(json.dumps(row), flush=True)
    return row


def report(results: list[dict], json_path: str | None) -> None:
    print(
        f"{'config':<12} {'px':>4} {'props':>5} {'RoIs':>4} {'best mAP@.5':>11} "
        f"{'final mAP@.5':>12} {'final mAP':>9} {'img/s':>7} {'wall s':>7}"
    )
    for r in results:
        print(
            f"{r['config']:<12} {r['min_size']:>4} {r['proposals_train']:>5} {r['rois']:>4} "
            f"{r['best_map50']:>11.4f} {r['final_map50']:>12.4f} {r['final_map'] or 0:>9.4f} "
            f"{r['train_images_per_s']:>7.1f} {r['wall_seconds']:>7.1f}",
            flush=True,
        )
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
