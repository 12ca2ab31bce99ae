"""Where a training step's time goes at 256 px, and gunctl's throughput on one GPU.

Runs gunctl's own code path (``build_model``, ``to_device_layout``, ``train_one_epoch`` with
gunctl's optimizer, AMP and channels-last defaults, and ``evaluate``'s detection pass) on
synthetic images of the data set's typical size (3 x 180 x 280, 1-3 boxes each), kept on the
device so that the figures are the model's and gunctl's, not the disk's:

1. profile: ``torch.profiler`` (CPU and, on a GPU, CUDA activities) over ``--profile-steps``
   training steps at batch ``--profile-batch``: the top operators, the GPU busy fraction
   (kernel time / wall time), and host-device synchronisations per step, counted twice:
   ``aten::_local_scalar_dense`` calls (``.item()``, ``float(t)``, ``.tolist()``) plus
   ``aten::nonzero`` in the profile, and, on CUDA, the warnings of
   ``torch.cuda.set_sync_debug_mode("warn")`` over one step;
2. training images/s at each of ``--batch-sizes`` (default 8, 16, 32), with peak memory;
3. validation (detection) images/s at batch 4 and 16, as ``gunctl validate`` runs it.

    python benchmarks/gpu_speed.py                    # on the GPU machine, ~2-3 minutes
    python benchmarks/gpu_speed.py --cpu-smoke        # the same code path on a CPU, ~1 minute
    bash benchmarks/gpu_speed.sh                      # on a rented GPU: writes under $OUT

Prints tables, and writes JSON to ``--json FILE`` (and ``$OUT/gpu_speed.json`` when OUT is
set), rewritten after each part so that a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # gunctl from this checkout

import torch  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")  # each waits for the device


def synthetic_batches(count: int, batch: int, device, seed: int = 0):
    """``count`` batches of ``batch`` images (3 x 180 x 280, 1-3 boxes), on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        images, targets = [], []
        for _ in range(batch):
            images.append(torch.rand(3, 180, 280, generator=generator).to(device))
            n = int(torch.randint(1, 4, (1,), generator=generator))
            xy = torch.rand(n, 2, generator=generator) * torch.tensor([200.0, 120.0])
            wh = 20 + torch.rand(n, 2, generator=generator) * 60
            boxes = torch.cat([xy, xy + wh], dim=1)
            targets.append(
                {
                    "boxes": boxes.to(device),
                    "labels": torch.ones(n, dtype=torch.int64, device=device),
                }
            )
        batches.append((images, targets))
    return batches


def build(args, device):
    """gunctl's model at gunctl's defaults (weights none), on ``device`` in its layout."""
    from gunctl.config import ModelConfig, TrainConfig
    from gunctl.core.model import build_model, to_device_layout

    model_config = ModelConfig(weights="none", min_size=args.size, max_size=int(args.size * 1.75))
    torch.manual_seed(0)
    model = build_model(model_config).model
    config = TrainConfig(model=model_config, batch_size=args.profile_batch)
    return to_device_layout(model, device, config.channels_last), config


def make_setup(model, config, device, steps_per_epoch: int):
    from gunctl.core.engine import TrainSetup, amp_dtype

    try:  # the optimizer's home after the trainer refactor
        from gunctl.core.optim import make_optimizer, make_scheduler
    except ImportError:
        from gunctl.core.trainer import make_optimizer, make_scheduler
    optimizer = make_optimizer(model, config)
    return TrainSetup(
        optimizer=optimizer,
        device=device,
        scheduler=make_scheduler(optimizer, config, steps_per_epoch),
        amp_dtype=amp_dtype(config.amp, device),
        grad_clip=config.grad_clip,
    )


def train_steps(model, setup, batches) -> float:
    """Seconds for gunctl's ``train_one_epoch`` over ``batches`` (device synchronised)."""
    from gunctl.core.engine import LossMeter, train_one_epoch

    sync(setup.device)
    started = time.perf_counter()
    train_one_epoch(
        model,
        batches,
        setup,
        epoch=0,
        step=0,
        first_batch=0,
        total_batches=len(batches),
        meter=LossMeter(),
    )
    sync(setup.device)
    return time.perf_counter() - started


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile(args, device) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, config = build(args, device)
    setup = make_setup(model, config, device, args.profile_steps + args.warmup)
    batches = synthetic_batches(args.warmup + args.profile_steps, args.profile_batch, device)
    train_steps(model, setup, batches[: args.warmup])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        wall = train_steps(model, setup, batches[args.warmup :])
    steps = args.profile_steps
    events = prof.key_averages()
    counts = Counter({e.key: e.count for e in events})
    device_us = sum(getattr(e, "self_device_time_total", 0.0) for e in events)
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort_key, row_limit=args.top)
    figures = {
        "batch": args.profile_batch,
        "steps": steps,
        "seconds_per_step": wall / steps,
        "images_per_s": args.profile_batch * steps / wall,
        "syncs_per_step_profile": {op: counts.get(op, 0) / steps for op in SYNC_OPS},
        "gpu_busy_fraction": (device_us / 1e6) / wall if device.type == "cuda" else None,
        "top_ops": table,
    }
    if device.type == "cuda":
        figures["syncs_per_step_debug_mode"] = count_sync_warnings(model, setup, device, args)
    return figures


def count_sync_warnings(model, setup, device, args) -> int:
    """Synchronising CUDA calls in one training step, as torch's sync debug mode sees them."""
    batch = synthetic_batches(1, args.profile_batch, device, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_steps(model, setup, batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def throughput(args, device) -> list[dict]:
    rows = []
    for batch in args.batch_sizes:
        model, config = build(args, device)
        setup = make_setup(model, config, device, args.warmup + args.steps)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            batches = synthetic_batches(args.warmup + args.steps, batch, device)
            train_steps(model, setup, batches[: args.warmup])
            seconds = train_steps(model, setup, batches[args.warmup :])
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": batch, "error": "out of memory"})
            continue
        finally:
            del model
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(
            {"batch": batch, "images_per_s": batch * args.steps / seconds, "peak_gib": peak}
        )
        print(f"train batch {batch}: {rows[-1]['images_per_s']:.1f} img/s", flush=True)
    return rows


def detection(args, device) -> list[dict]:
    from gunctl.core.engine import _autocast, amp_dtype, to_device

    model, config = build(args, device)
    model.eval()
    dtype = amp_dtype(True, device)
    rows = []
    for batch in args.eval_batch_sizes:
        batches = synthetic_batches(args.warmup + args.steps, batch, device, seed=2)
        seconds = 0.0
        for index, (images, targets) in enumerate(batches):
            images, _ = to_device(images, targets, device)
            sync(device)
            started = time.perf_counter()
            with torch.inference_mode(), _autocast(device, dtype):
                model(images)
            sync(device)
            if index >= args.warmup:
                seconds += time.perf_counter() - started
        rows.append({"batch": batch, "images_per_s": batch * args.steps / seconds})
        print(f"validate (detection) batch {batch}: {rows[-1]['images_per_s']:.1f} img/s")
    return rows


def environment(device) -> dict:
    import torchvision

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write(figures: dict, args) -> None:
    targets = [args.json] if args.json else []
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / "gpu_speed.json")
    for target in targets:
        Path(target).write_text(json.dumps(figures, indent=2, default=str))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="min_size (max: 1.75x)")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--eval-batch-sizes", default="4,16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile-batch", type=int, default=8)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="operators shown in the profile")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny settings on the CPU")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.cpu_smoke:
        args.batch_sizes, args.eval_batch_sizes = "2", "2"
        args.warmup, args.steps, args.profile_batch, args.profile_steps = 1, 2, 2, 2
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.eval_batch_sizes = [int(b) for b in args.eval_batch_sizes.split(",")]
    return args


def main() -> None:
    args = parse_args()
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    figures: dict = {"environment": environment(device), "size": args.size}
    print(json.dumps(figures["environment"]), flush=True)
    figures["profile"] = profile(args, device)
    print(figures["profile"].pop("top_ops"), flush=True)
    print(json.dumps(figures["profile"], indent=2, default=str), flush=True)
    write(figures, args)
    figures["train"] = throughput(args, device)
    write(figures, args)
    figures["validate"] = detection(args, device)
    figures["environment"]["load_average_end"] = os.getloadavg()
    write(figures, args)


if __name__ == "__main__":
    main()
