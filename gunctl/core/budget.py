"""``--minutes``: fit the number of epochs (and so the schedule) to a wall-time budget.

The trainer asks twice: after the first ``PROBE_STEPS`` steps (a provisional count from the
speed of those steps, with validation estimated), and after the first epoch (the final
count, from the first epoch's measured wall time: training, validation, checkpoint and
logging). The learning-rate schedule's decay and the EMA's window are then sized to that
count, so the run ends with a finished schedule and a checkpoint rather than being cut off.
Validation runs every k epochs, k chosen so that validating takes at most ``VAL_SHARE`` of the
training time (the last epoch always validates). The fitted epochs and k are in the config of
every checkpoint from the second epoch on: ``--resume`` goes on to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROBE_STEPS = 20  # timed steps, after SKIP_STEPS of start-up (workers, allocator, caches)
SKIP_STEPS = 2
VAL_SHARE = 0.15  # of training time, at most, spent validating
VAL_COST = 0.6  # a val image (loss pass + detection) against a training image: estimate only
END_SECONDS = 5.0  # the last checkpoint, TensorBoard's close, the summary


@dataclass
class Plan:
    epochs: int
    val_every: int


class Budget:
    def __init__(self, minutes: float, started: float):
        self.seconds = 60.0 * minutes
        self.started = started  # time.perf_counter() when fit began
        self.step_seconds: list[float] = []
        self.epoch_started: float | None = None  # when the first epoch began

    def probe(self, seconds: float) -> bool:
        """Record one step's time; True once enough steps are timed for a provisional plan."""
        self.step_seconds.append(seconds)
        return len(self.step_seconds) == SKIP_STEPS + PROBE_STEPS

    def provisional(self, now: float, steps_per_epoch: int, val_images: int, batch: int) -> Plan:
        timed = sorted(self.step_seconds[SKIP_STEPS:])
        step = timed[len(timed) // 2]  # the median: a slow step or two (another process) aside
        epoch_train = step * steps_per_epoch
        val = VAL_COST * step / batch * val_images
        spent_in_epoch = sum(self.step_seconds)
        remaining = self.seconds - (now - self.started) + spent_in_epoch
        return plan(remaining, epoch_train, val, done=0)

    def final(self, now: float, val: float, least: int = 1) -> Plan:
        """After epoch 1 (its checkpoint and logging included): how many epochs in all, at
        least ``least`` (2 when epoch 1 ran on a longer provisional schedule: the second
        finishes it). More than the provisional count restarts the decay from there."""
        epoch_wall = now - (self.epoch_started if self.epoch_started is not None else now)
        fitted = plan(self.seconds - (now - self.started), max(epoch_wall - val, 0.0), val, 1)
        return Plan(epochs=max(least, fitted.epochs), val_every=fitted.val_every)


def plan(remaining: float, epoch_train: float, val: float, done: int) -> Plan:
    """The most epochs (beyond ``done``) whose training and validation fit in ``remaining``."""
    val_every = max(1, math.ceil(val / (VAL_SHARE * epoch_train))) if epoch_train > 0 else 1
    remaining -= END_SECONDS
    more = 0
    while more < 100_000:
        n = more + 1
        cost = n * epoch_train + (n // val_every + (n % val_every != 0)) * val
        if cost > remaining:
            break
        more = n
    return Plan(epochs=max(1, done + more), val_every=val_every)
