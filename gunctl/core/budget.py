"""``--minutes``: fit the number of epochs (and so the schedule) to a wall-time budget, and
hold it while the machine's speed changes.

The trainer asks after the first ``PROBE_STEPS`` steps (a provisional count from the speed of
those steps, with validation estimated), after the first epoch (the count from that epoch's
measured wall time: training, validation, checkpoint and logging), and after every later epoch
(a refit from the median wall time of the latest ``RECENT`` epochs, so that a machine that
slows down or speeds up part-way is seen within two epochs). Each new count re-plans the rest
of the schedule from where it stands (``optim.make_scheduler(progress=...)``): the learning
rate goes on smoothly to the schedule's end over the remaining steps, never jumps. In the
final epoch, after every step, ``final_step`` re-plans the end from the
measured step times (median of the latest ``STEP_WINDOW``), the last validation's cost
(scaled by the slowdown since it ran) and what an epoch spends beyond its steps and
validation (its checkpoint and logging, measured): when the planned end would overrun, the
schedule is rebuilt to end at the step that fits and the epoch stops there, so the schedule
still reaches its end (the cosine's floor) and the run ends with a validated checkpoint,
within the margin (``MARGIN_SHARE`` of the budget or ``MARGIN_SECONDS``, whichever is larger).
Validation runs every k epochs, k chosen so that validating takes at most ``VAL_SHARE`` of the
training time (the last epoch always validates). The fitted epochs and k are in the config of
every checkpoint from the second epoch on: ``--resume`` goes on to them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

PROBE_STEPS = 20  # timed steps, after SKIP_STEPS of start-up (workers, allocator, caches)
SKIP_STEPS = 2
VAL_SHARE = 0.15  # of training time, at most, spent validating
VAL_COST = 0.6  # a val image (loss pass + detection) against a training image: estimate only
END_SECONDS = 5.0  # the last checkpoint, TensorBoard's close, the summary
PART_EPOCH = 0.25  # of an epoch left over: one more epoch, cut short at the budget's end
RECENT = 3  # epochs: a refit's epoch cost is the median of the latest ones
STEP_WINDOW = 8  # steps: the final epoch's step time is the median of the latest ones
MARGIN_SHARE = 0.02  # the promise: the run ends within 2 % of the budget...
MARGIN_SECONDS = 5.0  # ...or 5 s, whichever is larger (the end's checkpoint and summary)


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
        self.recent_steps: deque[float] = deque(maxlen=STEP_WINDOW)
        self.step_at_val = 0.0  # the step time when that validation ran (to scale it)
        self.end_step: int | None = None  # the final epoch's last step, once cut to fit
        self.val_guess: tuple[int, int] = (0, 1)  # val images, batch: before any validation
        self.recorded = 0  # steps recorded (record_step)
        self.epoch_step_seconds = 0.0  # the steps' time in the current epoch
        self.overheads: list[float] = []  # per epoch: wall time beyond steps and validation

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
        self._overhead_of(epoch_wall, val)
        fitted = plan(self.seconds - (now - self.started), max(epoch_wall - val, 0.0), val, 1)
        self.planned, self.val_seconds, self.step_at_val = True, val, self._step_time()
        return Plan(epochs=max(least, fitted.epochs), val_every=fitted.val_every)

    def refit(self, now: float, epoch_wall: float, val: float, done: int, epochs: int):
        """After epoch ``done`` (2 or later) took ``epoch_wall`` s, ``val`` of them validating
        (0 when it did not validate): a new plan when the count changes, else None. Never
        fewer than ``done + 1`` epochs (the final one may be cut short by ``final_step``)."""
        self.epoch_costs.append(max(epoch_wall - val, 0.0))
        self._overhead_of(epoch_wall, val)
        if val:
            self.val_seconds, self.step_at_val = val, self._step_time()
        costs = sorted(self.epoch_costs[-RECENT:])
        epoch_train = costs[len(costs) // 2]  # the median: one slow epoch moves it little
        fitted = plan(self.seconds - (now - self.started), epoch_train, self.val_seconds, done)
        fitted = Plan(epochs=max(done + 1, fitted.epochs), val_every=fitted.val_every)
        return fitted if fitted.epochs != epochs else None

    def record_step(self, seconds: float) -> None:
        self.recorded += 1
        self.epoch_step_seconds += seconds
        if self.recorded > SKIP_STEPS:  # the first steps carry the start-up
            self.recent_steps.append(seconds)

    def final_step(self, now: float, step: int, planned_end: int) -> int | None:
        """In the final epoch, after global step ``step``: the step at which training must
        end for validation and the end to finish within the budget, when that is before
        ``planned_end``; else None (the plan fits)."""
        step_time = self._step_time()
        if step_time <= 0.0:
            return None
        left = self.seconds - (now - self.started) - self._reserve()
        end = step + max(0, round(left / step_time))  # the nearest step: errs either way
        return end if end < planned_end else None

    def out_of_time(self, now: float, step: int, steps_per_epoch: int) -> bool:
        """During the first epoch (no count fitted yet): whether its remaining steps would
        outlast the budget, so that it must be the run's only (and cut) epoch."""
        if self.recorded <= SKIP_STEPS:  # the start-up's slow steps alone say little
            return False
        step_time = self._step_time()
        left_steps = steps_per_epoch - step
        left = self.seconds - (now - self.started) - self._reserve()
        return step_time > 0.0 and left_steps * step_time > left

    def _overhead_of(self, epoch_wall: float, val: float) -> None:
        """What an epoch spent beyond its steps and validation (its checkpoint, logging): the
        final epoch spends it too, so ``final_step`` keeps it free."""
        if self.recorded:
            self.overheads.append(max(0.0, epoch_wall - val - self.epoch_step_seconds))
        self.epoch_step_seconds = 0.0

    def _reserve(self) -> float:
        """The time kept free after the final step: the end, an epoch's overhead, validation."""
        recent = sorted(self.overheads[-RECENT:])
        overhead = recent[len(recent) // 2] if recent else 0.0
        return END_SECONDS + overhead + self._val_estimate()

    def _step_time(self) -> float:
        steps = sorted(self.recent_steps)
        return steps[len(steps) // 2] if steps else 0.0

    def _val_estimate(self) -> float:
        """The final validation: the latest one's time, scaled by how much slower (or faster)
        the steps are now than when it ran."""
        if self.step_at_val > 0.0 and self.recent_steps:
            return self.val_seconds * self._step_time() / self.step_at_val
        if not self.val_seconds:  # no validation yet: from the step time, as provisional does
            images, batch = self.val_guess
            return VAL_COST * self._step_time() / max(batch, 1) * images
        return self.val_seconds

    def margin(self) -> float:
        """The documented promise: the run ends within this many seconds of the budget."""
        return max(MARGIN_SHARE * self.seconds, MARGIN_SECONDS)


def plan(remaining: float, epoch_train: float, val: float, done: int) -> Plan:
    """The most epochs (beyond ``done``) whose training and validation fit in ``remaining``,
    plus one more when at least ``PART_EPOCH`` of an epoch's training is left over: that last
    epoch is cut at the step that fits (``Budget.final_step``), so the run uses its budget
    rather than ending up to an epoch early."""
    val_every = max(1, math.ceil(val / (VAL_SHARE * epoch_train))) if epoch_train > 0 else 1
    remaining -= END_SECONDS
    more, cost = 0, 0.0
    while more < 100_000:
        n = more + 1
        needed = n * epoch_train + (n // val_every + (n % val_every != 0)) * val
        if needed > remaining:
            break
        more, cost = n, needed
    if more and epoch_train > 0 and remaining - cost >= PART_EPOCH * epoch_train:
        more += 1
    return Plan(epochs=max(1, done + more), val_every=val_every)
