"""Where a training step's time goes: torch.profiler over gunctl's default model and settings.

A few steps (default 1 warm-up + 3 profiled) of gunctl's training step on real images of the
sample, in this process, with no DataLoader workers so that every phase is visible:

  data       GunDataset items (decode, flip, scale) + collate, in the main process (gunctl's
             default 2 workers hide this behind the model; measured here on its own)
  transform  model.transform (resize, normalise, batch)
  backbone   model.backbone (ResNet-50 + FPN), forward only
  rpn        model.rpn (anchors, proposals, NMS, RPN losses), forward only
  roi_heads  model.roi_heads (RoIAlign, box head, sampling, losses), forward only
  loss       summing the losses and reading them as floats
  backward   zero_grad + backward through the whole model
  optimizer  gradient clipping + optimizer step + scheduler step
  logging    gunctl's TensorBoardLogger.on_step_end (add_scalar of each loss, lr, images/s)

Forward phases are wrapped with ``torch.profiler.record_function`` from forward pre/post
hooks and timed with ``perf_counter`` (wall time, profiler overhead included). Backward cannot
be split by module with hooks; the top backward functions (e.g. ``RoiAlignBackward0``) and the
top operators by self CPU time are listed instead.

    .venv/bin/python benchmarks/profile_step.py [--min-size 800] [--steps 3] [--json FILE]
    .venv/bin/python benchmarks/profile_step.py --min-size 800 --original-proposals
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import (
    TORCHVISION_COUNTS,
    base_parser,
    environment,
    ingest_sample,
    print_table,
    write_json,
)

FORWARD_PARTS = ("transform", "backbone", "rpn", "roi_heads")
STEP_PHASES = ("data", "forward", "loss", "backward", "optimizer", "logging")
ORIGINAL_PROPOSALS = TORCHVISION_COUNTS  # torchvision's, as the original pipeline used


class PhaseTimer:
    """Wall time per named phase, each also a ``record_function`` range for the profiler."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._open: dict[str, tuple] = {}

    def enter(self, name: str) -> None:
        import torch

        scope = torch.profiler.record_function(name)
        scope.__enter__()
        self._open[name] = (scope, time.perf_counter())

    def exit(self, name: str) -> None:
        scope, started = self._open.pop(name)
        scope.__exit__(None, None, None)
        self.totals[name] += time.perf_counter() - started

    @contextlib.contextmanager
    def phase(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit(name)

    def attach(self, module, name: str) -> None:
        """Time ``module``'s forward with pre/post hooks."""
        module.register_forward_pre_hook(lambda _module, _args: self.enter(name))
        module.register_forward_hook(lambda _module, _args, _out: self.exit(name))

    def reset(self) -> None:
        self.totals.clear()


def model_config(args):
    from gunctl.config import ModelConfig

    config = ModelConfig(weights="none")
    if args.min_size is not None:
        max_size = args.max_size or max(config.max_size, round(args.min_size * 1333 / 800))
        config = dataclasses.replace(config, min_size=args.min_size, max_size=max_size)
    if args.original_proposals:
        config = dataclasses.replace(config, **ORIGINAL_PROPOSALS)
    return config


def setup(args, layout, split, scratch: Path) -> dict:
    """Model, optimizer, scheduler, dataset and logger, as gunctl's trainer makes them."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from gunctl.config import TrainConfig
    from gunctl.core.callbacks import TensorBoardLogger
    from gunctl.core.dataset import GunDataset
    from gunctl.core.model import build_model
    from gunctl.core.optim import default_batch_size, make_optimizer, make_scheduler
    from gunctl.core.transforms import TrainTransform

    config = TrainConfig(
        model=model_config(args), layout=layout, batch_size=default_batch_size(torch.device("cpu"))
    )
    torch.manual_seed(config.seed)
    model = build_model(config.model).model.train()
    optimizer = make_optimizer(model, config)
    steps = args.warmup + args.steps
    logger = TensorBoardLogger()
    logger.writer = SummaryWriter(log_dir=str(scratch / "tb"))
    return {
        "config": config,
        "model": model,
        "optimizer": optimizer,
        "scheduler": make_scheduler(optimizer, config, steps),
        "dataset": GunDataset(layout.raw, split["train"], TrainTransform(0.5), seed=config.seed),
        "logger": logger,
    }


def load_batch(dataset, step: int, batch_size: int):
    from gunctl.core.dataset import collate

    start = step * batch_size
    indices = [(0, i % len(dataset)) for i in range(start, start + batch_size)]
    return collate([dataset[key] for key in indices])


def train_step(parts: dict, timer: PhaseTimer, step: int) -> None:
    """gunctl's step (engine._optimizer_step, no AMP on the CPU), phase by phase."""
    import torch

    from gunctl.core.engine import StepInfo

    config, model, optimizer = parts["config"], parts["model"], parts["optimizer"]
    tick = time.perf_counter()
    with timer.phase("data"):
        images, targets = load_batch(parts["dataset"], step, config.batch_size)
    with timer.phase("forward"):
        loss_dict = model(images, targets)
    with timer.phase("loss"):
        total = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        values["loss"] = float(total.detach())
    with timer.phase("backward"):
        optimizer.zero_grad(set_to_none=True)
        total.backward()
    with timer.phase("optimizer"):
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        parts["scheduler"].step()
    with timer.phase("logging"):
        lr = optimizer.param_groups[0]["lr"]
        seconds = time.perf_counter() - tick
        info = StepInfo(0, step + 1, 0, step + 1, len(images), values, lr, seconds)
        parts["logger"].on_step_end(None, info)


def run_steps(parts: dict, args) -> tuple[dict, object, float]:
    """Warm-up steps, then the profiled steps; returns (phase totals, profiler, seconds)."""
    from torch.profiler import ProfilerActivity, profile

    timer = PhaseTimer()
    model = parts["model"]
    for name in FORWARD_PARTS:
        timer.attach(getattr(model, name), name)
    for step in range(args.warmup):
        train_step(parts, timer, step)
    timer.reset()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for step in range(args.warmup, args.warmup + args.steps):
            train_step(parts, timer, step)
        seconds = time.perf_counter() - started
    parts["logger"].writer.close()
    return dict(timer.totals), prof, seconds


def phase_rows(totals: dict, steps: int, seconds: float) -> tuple[list, dict]:
    step_total = sum(totals.get(p, 0.0) for p in STEP_PHASES)
    rows, figures = [], {}

    def add(label: str, value: float) -> None:
        per_step = value / steps
        figures[label.strip()] = per_step
        rows.append([label, per_step, 100 * value / step_total if step_total else None])

    add("data", totals.get("data", 0.0))
    add("forward", totals.get("forward", 0.0))
    for name in FORWARD_PARTS:
        add(f"  {name}", totals.get(name, 0.0))
    inner = sum(totals.get(name, 0.0) for name in FORWARD_PARTS)
    add("  forward, other", totals.get("forward", 0.0) - inner)
    for name in ("loss", "backward", "optimizer", "logging"):
        add(name, totals.get(name, 0.0))
    rows.append(["step (sum of phases)", step_total / steps, 100.0])
    figures["step"] = step_total / steps
    figures["step_wall"] = seconds / steps
    return rows, figures


def top_operators(prof, count: int, backward_only: bool = False) -> list[dict]:
    events = [
        e
        for e in prof.key_averages()
        if not backward_only or e.key.startswith("autograd::engine::evaluate_function")
    ]
    key = (lambda e: e.cpu_time_total) if backward_only else (lambda e: e.self_cpu_time_total)
    ranked = sorted(events, key=key, reverse=True)
    labels = set(STEP_PHASES) | set(FORWARD_PARTS)
    return [
        {
            "name": e.key.replace("autograd::engine::evaluate_function: ", ""),
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "cpu_total_ms": e.cpu_time_total / 1000,
        }
        for e in ranked
        if e.key not in labels
    ][:count]


def print_operators(title: str, operators: list[dict], steps: int) -> None:
    rows = [
        [
            op["name"][:60],
            op["calls"] / steps,
            op["self_cpu_ms"] / steps,
            op["cpu_total_ms"] / steps,
        ]
        for op in operators
    ]
    print_table(["operator", "calls/step", "self ms/step", "total ms/step"], rows, title=title)


def main() -> None:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # before torch: no GPU-probe error lines
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--min-size", type=int, default=None, help="default: gunctl's")
    parser.add_argument("--max-size", type=int, default=None, help="default: gunctl's")
    parser.add_argument(
        "--original-proposals", action="store_true", help="torchvision's proposal/RoI counts"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 1 profiled step")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps = 1, 1
    import torch

    with tempfile.TemporaryDirectory(prefix="gunctl-profile-") as tmp:
        layout, split = ingest_sample(args.data, Path(tmp) / "artifacts")
        parts = setup(args, layout, split, Path(tmp))
        totals, prof, seconds = run_steps(parts, args)
    config = parts["config"]
    model = config.model
    print(
        f"{model.name}, {model.min_size}/{model.max_size} px, batch {config.batch_size}, "
        f"proposals {model.rpn_post_nms_top_n_train}, RoIs/image "
        f"{model.box_batch_size_per_image}, {torch.get_num_threads()} threads; "
        f"{args.steps} profiled step(s) after {args.warmup} warm-up"
    )
    rows, phases = phase_rows(totals, args.steps, seconds)
    print_table(["phase", "s/step", "% of step"], rows, title="wall time per phase")
    operators = top_operators(prof, args.top)
    backward = top_operators(prof, args.top, backward_only=True)
    print_operators("top operators by self CPU time", operators, args.steps)
    print_operators("top backward functions by total CPU time", backward, args.steps)
    figures = {
        "environment": environment(),
        "model": dataclasses.asdict(model),
        "batch_size": config.batch_size,
        "steps": args.steps,
        "phases_seconds_per_step": phases,
        "top_operators": operators,
        "top_backward": backward,
    }
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
