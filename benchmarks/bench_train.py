"""Training throughput (images/s) and peak RSS: gunctl versus the original pipeline's loop.

Three configurations, each in its own process (so each peak RSS is its own), one after the
other, on the real sample:

  (a) gunctl's defaults (TrainConfig() / ModelConfig(), weights "none": nothing downloads);
  (b) gunctl at the original pipeline's settings: fasterrcnn_resnet50_fpn, 800/1333 px,
      batch 3, Adam 1e-4, torchvision's proposal and RoI counts, workers 0, and the original's
      plain optimisation (constant lr, no warm-up, no gradient clipping, no flips, no AMP);
  (c) the bare reference loop (benchmarks/reference.py) at the same settings as (b), over the
      same training images.

(a) and (b) run through gunctl's real training code, ``gunctl.core.trainer.fit``, with a
callback that records each step's seconds (they include data loading and the previous step's
logging callbacks). Each run's subset makes the epoch W + K steps long; the first W are
warm-up, the next K are timed. The epoch's validation and checkpoint run after the timed
steps and are not part of the figures (they are part of the process wall time shown).

    .venv/bin/python benchmarks/bench_train.py [--warmup 2] [--steps 6] [--json FILE]
    .venv/bin/python benchmarks/bench_train.py --quick     # W=1, K=2, 320 px for (b)/(c)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import (
    BENCH_DIR,
    TORCHVISION_COUNTS,
    base_parser,
    check_ran,
    children_peak_rss_mib,
    environment,
    image_pairs,
    ingest_sample,
    peak_rss_mib,
    print_table,
    run_timed,
    write_json,
)

DESCRIPTIONS = {
    "a": "gunctl defaults",
    "b": "gunctl, original settings",
    "c": "bare reference loop",
}
ORIGINAL_BATCH = 3


# --- configurations ------------------------------------------------------------------------


def train_config(name: str, root: Path, subset: int, min_size: int, device: str):
    """The TrainConfig of configuration ``a`` or ``b``: one epoch over ``subset`` images."""
    from gunctl.config import Layout, ModelConfig, TrainConfig

    common = {
        "layout": Layout(root),
        "epochs": 1,
        "subset": subset,
        "device": device,
        "run_name": f"bench-{name}",
    }
    if name == "a":
        return with_batch_size(TrainConfig(model=ModelConfig(weights="none"), **common))
    model = ModelConfig(
        name="fasterrcnn_resnet50_fpn",
        weights="none",
        min_size=min_size,
        max_size=1333,
        **TORCHVISION_COUNTS,
    )
    return TrainConfig(
        model=model,
        batch_size=ORIGINAL_BATCH,
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        lr_schedule="constant",
        warmup_steps=0,
        grad_clip=None,
        amp=False,
        workers=0,
        hflip=False,
        group_aspect_ratios=False,  # the same batches as the reference loop, image for image
        **common,
    )


def pick_subset(
    split: dict, batch_size: int, steps: int, seed: int = 0, grouped: bool = True
) -> int:
    """The smallest ``--subset`` whose training epoch is ``steps`` batches long, with every
    batch full when such a subset exists (gunctl groups batches by aspect ratio)."""
    from gunctl.core.batching import EpochBatchSampler
    from gunctl.core.split import subset_split

    total = len(split["train"]) + len(split["val"])
    fallback = None
    for count in range(2, total + 1):
        train = subset_split(split, count, seed)["train"]
        ratios = [item["width"] / item["height"] for item in train] if grouped else None
        sampler = EpochBatchSampler(len(train), batch_size, seed=seed, aspect_ratios=ratios)
        batches = sampler.batches_per_epoch()
        if batches == steps and len(train) == steps * batch_size:
            return count
        if batches >= steps and fallback is None:
            fallback = count
        if batches > steps + 1:
            break
    return fallback or total


# --- the worker: one gunctl configuration in this process ------------------------------------


def run_worker(args) -> None:
    """Train configuration ``args.worker`` through gunctl's fit; write the figures as JSON."""
    import time

    from gunctl.core.trainer import fit

    base_rss = peak_rss_mib()  # torch and gunctl imported, nothing built yet
    config = train_config(args.worker, args.root, args.subset, args.min_size, args.device)
    recorder = _step_recorder(args.warmup + args.steps)
    started = time.perf_counter()
    result = fit(config, [recorder])
    figures = {
        "step_seconds": recorder.seconds,
        "step_images": recorder.images,
        "rss_after_imports_mib": base_rss,
        "peak_rss_after_steps_mib": recorder.rss,
        "peak_rss_mib": peak_rss_mib(),
        "workers_peak_rss_mib": children_peak_rss_mib(),
        "fit_seconds": time.perf_counter() - started,
        "train_images": result.train_images,
        "val_images": result.val_images,
    }
    Path(args.result).write_text(json.dumps(figures, indent=2) + "\n")


def _step_recorder(steps: int):
    from gunctl.core.callbacks import Callback

    class StepRecorder(Callback):
        """Each step's seconds and images; the peak RSS once ``steps`` steps are done."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.images: list[int] = []
            self.rss: float | None = None

        def on_step_end(self, state, step) -> None:
            self.seconds.append(step.seconds)
            self.images.append(step.images)
            if len(self.seconds) == steps:
                self.rss = peak_rss_mib()

    return StepRecorder()


# --- the parent: launch each configuration, then report ----------------------------------------


def launch_gunctl(name: str, root: Path, subset: int, args, scratch: Path) -> dict:
    out = scratch / f"result-{name}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--root",
        str(root),
        "--subset",
        str(subset),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--min-size",
        str(args.min_size),
        "--device",
        args.device,
        "--result",
        str(out),
    ]
    ran, seconds = run_timed(cmd, sample_memory=True)
    check_ran(f"configuration {name}", ran)
    figures = json.loads(out.read_text())
    figures.update(process_seconds=seconds, peak_tree_pss_mib=ran.get("peak_tree_pss_mib"))
    return figures


def in_gunctl_order(items: list[dict]) -> list[dict]:
    """The items in the order of gunctl's first epoch (seed 0, no grouping), so that the
    reference loop, reading them in order, trains on exactly (b)'s batches."""
    from gunctl.core.batching import EpochBatchSampler

    sampler = EpochBatchSampler(len(items), ORIGINAL_BATCH, seed=0)
    sampler.set_epoch(0)
    return [items[index] for batch in sampler for _, index in batch]


def launch_reference(train_items: list[dict], args, scratch: Path) -> dict:
    spec, out = scratch / "reference-spec.json", scratch / "result-c.json"
    spec.write_text(json.dumps({"train": image_pairs(args.data, train_items), "val": []}))
    cmd = [
        sys.executable,
        str(BENCH_DIR / "reference.py"),
        "--spec",
        str(spec),
        "--steps",
        str(args.warmup + args.steps),
        "--batch-size",
        str(ORIGINAL_BATCH),
        "--min-size",
        str(args.min_size),
        "--device",
        args.device,
        "--result",
        str(out),
        "--in-order",
    ]
    ran, seconds = run_timed(cmd, sample_memory=True)
    check_ran("configuration c (reference)", ran)
    figures = json.loads(out.read_text())
    figures.update(
        process_seconds=seconds,
        peak_tree_pss_mib=ran.get("peak_tree_pss_mib"),
        train_images=len(train_items),
    )
    return figures


def throughput(figures: dict, warmup: int) -> dict:
    """Images/s and s/image over the steps after the warm-up."""
    seconds = figures["step_seconds"][warmup:]
    images = figures["step_images"][warmup:]
    total_s, total_images = sum(seconds), sum(images)
    return {
        "timed_steps": len(seconds),
        "timed_images": total_images,
        "timed_seconds": total_s,
        "images_per_s": total_images / total_s if total_s else None,
        "seconds_per_image": total_s / total_images if total_images else None,
    }


def report(results: dict, args) -> dict:
    rows = []
    for name, figures in results.items():
        speed = figures["throughput"]
        rows.append(
            [
                f"({name}) {DESCRIPTIONS[name]}",
                figures["setting"],
                figures["step_seconds"][0] if figures["step_seconds"] else None,
                speed["timed_steps"],
                speed["timed_images"],
                speed["images_per_s"],
                speed["seconds_per_image"],
                figures.get("rss_after_imports_mib"),
                figures.get("peak_rss_after_steps_mib"),
                figures.get("peak_rss_mib"),
                figures.get("peak_tree_pss_mib"),
                figures["process_seconds"],
            ]
        )
    print_table(
        [
            "configuration",
            "setting",
            "1st step s",
            "steps",
            "images",
            "img/s",
            "s/img",
            "RSS imports MiB",
            "RSS@steps MiB",
            "RSS end MiB",
            "tree PSS MiB",
            "process s",
        ],
        rows,
        title=f"training throughput: {args.warmup} warm-up + {args.steps} timed steps",
    )
    print(
        "1st step: the first warm-up step (loader start-up included). RSS imports: ru_maxrss with\n"
        "torch imported, before the model; RSS@steps: after the timed steps; RSS end: at exit\n"
        "(after validation and checkpoint); tree PSS: sampled peak of the summed proportional set\n"
        "size of the process and its DataLoader workers (shared pages counted once)."
    )
    return ratios(results)


def with_batch_size(config):
    """gunctl's default batch size depends on the device (None in the config): resolve it."""
    import dataclasses

    from gunctl.core.distributed import DistInfo, resolve_device
    from gunctl.core.optim import default_batch_size

    if config.batch_size is not None:
        return config
    device = resolve_device(config.device, DistInfo())
    return dataclasses.replace(config, batch_size=default_batch_size(device))


def ratios(results: dict) -> dict:
    speed = {n: results[n]["throughput"]["images_per_s"] for n in results}
    out = {}
    for top, bottom, note in (("b", "c", "target >= 0.9"), ("a", "c", "")):
        if speed.get(top) and speed.get(bottom):
            out[f"{top}/{bottom}"] = speed[top] / speed[bottom]
            print(f"images/s ratio {top}/{bottom}: {out[f'{top}/{bottom}']:.3f}  {note}".rstrip())
    return out


def setting_text(config) -> str:
    m = config.model
    return f"{m.min_size}/{m.max_size}px b{config.batch_size} w{config.workers}"


def run_all(args) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="gunctl-bench-train-") as tmp:
        scratch = Path(tmp)
        layout, split = ingest_sample(args.data, scratch / "artifacts")
        subsets = {}
        for name in [n for n in ("a", "b") if n in args.configs]:
            probe = train_config(name, layout.root, 2, args.min_size, args.device)
            subsets[name] = pick_subset(
                split, probe.batch_size, args.warmup + args.steps, grouped=probe.group_aspect_ratios
            )
            print(f"({name}) {DESCRIPTIONS[name]}: subset {subsets[name]} ...", flush=True)
            figures = launch_gunctl(name, layout.root, subsets[name], args, scratch)
            figures.update(subset=subsets[name], setting=setting_text(probe))
            results[name] = figures
        if "c" in args.configs:
            from gunctl.core.split import subset_split

            count = subsets.get("b") or pick_subset(
                split, ORIGINAL_BATCH, args.warmup + args.steps, grouped=False
            )
            train_items = in_gunctl_order(subset_split(split, count, 0)["train"])
            print(
                f"(c) {DESCRIPTIONS['c']}: the {len(train_items)} train images of subset "
                f"{count} ...",
                flush=True,
            )
            figures = launch_reference(train_items, args, scratch)
            figures.update(subset=count, setting=f"{args.min_size}/1333px b{ORIGINAL_BATCH} w0")
            results["c"] = figures
    for figures in results.values():
        figures["throughput"] = throughput(figures, args.warmup)
    return results


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (W)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (K)")
    parser.add_argument("--min-size", type=int, default=800, help="for (b) and (c)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--configs", default="abc", help="which of a, b, c to run")
    parser.add_argument("--quick", action="store_true", help="W=1, K=2, 320 px for (b)/(c)")
    # the worker side (internal): one gunctl configuration, figures to --result
    parser.add_argument("--worker", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--subset", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps, args.min_size = 1, 2, 320
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    results = run_all(args)
    figures = {
        "environment": environment(),
        "warmup": args.warmup,
        "steps": args.steps,
        "min_size_b_c": args.min_size,
        "configurations": results,
    }
    figures["ratios"] = report(results, args)
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
