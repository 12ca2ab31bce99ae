"""Hooks beside the training loop (detectron2's ``hooks.py``): the weight average and early
stopping. Unlike the callbacks that write files and show progress (given on rank 0 only),
these run on every rank, so that under torchrun every rank averages its weights and stops
at the same epoch; a decision that one rank makes (the best epoch is rank 0's) is broadcast.

The trainer fires them with its callbacks, in this order: ``EmaHook`` first (the average is
up to date before anything reads it), the callbacks, then ``PatienceHook`` and the
``--minutes`` budget's hook (``trainer.BudgetHook``, beside the budget's helpers).
"""

from __future__ import annotations

import logging

from gunctl.core import distributed
from gunctl.core.callbacks import Callback

log = logging.getLogger("gunctl")


class EmaHook(Callback):
    """--ema: after every optimizer step, the average follows the trained weights."""

    def on_step_end(self, state, step) -> None:
        if state.ema is not None:
            state.ema.update(state.model)


class PatienceHook(Callback):
    """--patience N: stop when val mAP@0.5 has not improved for N epochs. Rank 0 knows the
    best epoch; its decision reaches every rank, and ``state.stopped_early`` says why."""

    def on_epoch_end(self, state, record, result) -> None:
        patience = state.config.patience
        stale = state.epoch - (state.best_epoch or 0)
        stop = bool(patience and state.epoch < state.config.epochs and stale >= patience)
        if not distributed.broadcast_object(stop):
            return
        state.stopped_early = (
            f"stopped after epoch {state.epoch} of {state.config.epochs}: val mAP@0.5 has not "
            f"improved for {stale} epoch(s) (--patience {patience}); best: epoch "
            f"{state.best_epoch}"
        )
        log.info("%s", state.stopped_early)
