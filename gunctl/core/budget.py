"""``--minutes``: fit the number of epochs (and so the schedule) to a wall-time budget.

The trainer asks after the first ``PROBE_STEPS`` steps (a provisional count from the speed of
those steps, with validation estimated), after the first epoch (the count from that epoch's
measured wall time: training, validation, checkpoint and logging), and after each later epoch
of the first ``REFIT_SHARE`` of the run (refits from the median wall time of the epochs since
the first, which carries the start-up: worker processes, first imports, a machine busy at
that moment). The learning-rate schedule's decay and the EMA's window are sized to the count,
so the run ends with a finished schedule and a checkpoint rather than being cut off; refits
stop while the cosine is still near its peak, where a changed horizon moves the learning rate
little. Validation runs every k epochs, k chosen so that validating takes at most
``VAL_SHARE`` of the training time (the last epoch always validates). The fitted epochs and k
are in the config of every checkpoint from the second epoch on: ``--resume`` goes on to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PROBE_STEPS = 20  # timed steps, after SKIP_STEPS of start-up (workers, allocator, caches)
SKIP_STEPS = 2
VAL_SHARE = 0.15  # of training time, at most, spent validating
VAL_COST = 0.6  # a val image (loss pass + detection) against a training image: estimate only
END_SECONDS = 5.0  # the last checkpoint, TensorBoard's close, the summary
REFIT_SHARE = 1 / 3  # of the epochs: refits after each epoch until this share is done


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
        self.planned = False  # the count from the first epoch is in force (refits may follow)
        self.epoch_costs: list[float] = []  # wall s of each epoch after the first, less validation
        self.val_seconds = 0.0  # the latest validation's

    def probe(self, seconds: float) -> bool:
        """Record one step's time; True once enough steps are timed for a provisional plan."""
        if self.planned or len(self.step_seconds) >= SKIP_STEPS + PROBE_STEPS:
            return False
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
        self.planned, self.val_seconds = True, val
        return Plan(epochs=max(least, fitted.epochs), val_every=fitted.val_every)

    def refit(self, now: float, epoch_wall: float, val: float, done: int, epochs: int):
        """After epoch ``done`` (2 or later) took ``epoch_wall`` s, ``val`` of them validating
        (0 when it did not validate): a new plan when the count changes, else None. Never
        fewer than ``done + 1`` epochs: the schedule's decay is still to come."""
        self.epoch_costs.append(max(epoch_wall - val, 0.0))
        self.val_seconds = val or self.val_seconds
        costs = sorted(self.epoch_costs)
        epoch_train = costs[len(costs) // 2]  # the median: one slow epoch moves it little
        fitted = plan(self.seconds - (now - self.started), epoch_train, self.val_seconds, done)
        fitted = Plan(epochs=max(done + 1, fitted.epochs), val_every=fitted.val_every)
        return fitted if fitted.epochs != epochs else None

    def refitting(self, done: int, epochs: int) -> bool:
        """Whether refits go on after epoch ``done`` of ``epochs``."""
        return done < max(2, math.ceil(epochs * REFIT_SHARE))


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
