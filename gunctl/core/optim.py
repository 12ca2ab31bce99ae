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
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """Per-step LambdaLR: linear warm-up over at most one epoch, then constant, cosine or step.

    The horizon is ``epochs * steps_per_epoch`` of the current command, so resuming with more
    epochs stretches a cosine or step schedule to the new end.
    """
    factor = lr_factor(config, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lr_factor(config: TrainConfig, steps_per_epoch: int):
    """The multiplier of the peak learning rate at each optimizer step (a pure function)."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(config.warmup_steps, steps_per_epoch)

    def factor(step: int) -> float:
        scale = (step + 1) / warmup if step < warmup else 1.0
        progress = min(1.0, step / total)
        if config.lr_schedule == "cosine":
            return scale * max(0.01, 0.5 * (1.0 + math.cos(math.pi * progress)))
        if config.lr_schedule == "step":
            return scale * 0.1 ** sum(progress >= m for m in _MILESTONES)
        return scale

    return factor
