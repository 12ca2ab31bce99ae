"""Optimizer, learning-rate schedule and batch-size defaults, from a TrainConfig."""

from __future__ import annotations

import math

import torch
from torch import nn

from gunctl.config import TrainConfig

_MILESTONES = (0.7, 0.9)  # "step": x0.1 at 70 % and again at 90 % of the steps


def default_batch_size(device: torch.device) -> int:
    return 8 if device.type == "cuda" else 2


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    # fused: one kernel over all parameters instead of a dozen passes per tensor; the same
    # update, 11x faster on the CPU (0.015 vs 0.16 s for ResNet-18 FPN's 27 M parameters).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def make_scheduler(
    optimizer,
    config: TrainConfig,
    steps_per_epoch: int,
    last_step: int = 0,
    total_steps: int | None = None,
    progress: float | None = None,
):
    """Per-step LambdaLR: linear warm-up over at most one epoch, then constant, cosine or step.

    The horizon is ``epochs * steps_per_epoch`` of the current command, so resuming with more
    epochs stretches a cosine or step schedule to the new end. ``last_step``: a schedule
    rebuilt mid-run (a --minutes budget re-planned), going on from that many steps;
    ``total_steps``: another horizon (a final epoch cut at the budget's end); ``progress``:
    where the schedule being replaced stood at ``last_step`` (``schedule_progress``): the new
    one goes on from there to its end over the remaining steps, so the learning rate moves
    on smoothly instead of jumping when a budget lengthens or shortens the run.
    """
    start = (last_step, progress) if progress is not None else None
    factor = lr_factor(config, steps_per_epoch, total_steps, start)
    if last_step > 0:  # the optimizer's groups hold "initial_lr" from the first schedule
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=last_step - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def schedule_progress(scheduler, step: int) -> float:
    """How far (0 to 1) the schedule of ``scheduler`` is at ``step``."""
    return scheduler.lr_lambdas[0].progress(step)


def lr_factor(
    config: TrainConfig,
    steps_per_epoch: int,
    total_steps: int | None = None,
    start: tuple[int, float] | None = None,
):
    """The multiplier of the peak learning rate at each optimizer step (a pure function).
    ``start``: (step, progress) from which the schedule runs on to its end at ``total``."""
    total = max(1, total_steps or config.epochs * steps_per_epoch)
    warmup = min(config.warmup_steps, steps_per_epoch)
    first, done = start or (0, 0.0)

    def progress(step: int) -> float:
        if step >= total:
            return 1.0
        if step <= first:
            return min(1.0, done)
        return min(1.0, done + (1.0 - done) * (step - first) / (total - first))

    def factor(step: int) -> float:
        where = progress(step)
        # a schedule at its end is at its end, even when a budget cut it during the warm-up
        scale = (step + 1) / warmup if step < warmup and where < 1.0 else 1.0
        if config.lr_schedule == "cosine":
            return scale * max(0.01, 0.5 * (1.0 + math.cos(math.pi * where)))
        if config.lr_schedule == "step":
            return scale * 0.1 ** sum(where >= m for m in _MILESTONES)
        return scale

    factor.progress = progress
    return factor
