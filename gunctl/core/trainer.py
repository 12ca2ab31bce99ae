"""The epoch loop: set up data, model and optimizer, then train, evaluate and fire callbacks.

The math lives in ``engine``; files and displays live in ``callbacks``; the state they share
lives in ``state``; the run's set-up (resume, config, split, data, model) in ``run_setup``.
``fit`` runs the same in one process and under torchrun (rank 0 evaluates, writes and
reports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

import torch

from gunctl.config import (
    TrainConfig,
)
from gunctl.core import distributed, recipes
from gunctl.core.callbacks import Callback, CallbackList, CheckpointSaver, TensorBoardLogger
from gunctl.core.checkpoint import (
    check_same_run,
    load_checkpoint,
    read_facts,
    require_full,
)
from gunctl.core.distributed import DistInfo
from gunctl.core.engine import (
    EvalResult,
    LossMeter,
    TrainSetup,
    amp_dtype,
    cpu_bf16_backbone,
    evaluate,
    train_one_epoch,
)
from gunctl.core.hooks import EmaHook, PatienceHook
from gunctl.core.manifest import class_names_of
from gunctl.core.optim import (
    default_batch_size,
    make_scheduler,
    schedule_progress,
)
from gunctl.core.paths import safe_name
from gunctl.core.rawlock import RawLock
from gunctl.core.run_setup import (
    Resumed,
    TrainingParts,
    build_parts,
    check_run_identity,
    claim_timestamped_run,
    prepare_split,
    remove_stale_temporaries,
    resolve_resume,
    resumed_train_config,
    with_classes,
)
from gunctl.core.runlock import RunLock
from gunctl.core.state import SELECTION_METRIC, FitResult, TrainState
from gunctl.errors import (
    DivergedError,
    TrainingError,
    UsageError,
    is_out_of_memory,
)

log = logging.getLogger("gunctl")


def fit(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train per ``config``; under torchrun every rank calls this, rank 0 reports."""
    config.check(relations=False)  # each value alone; relations once the recipe filled it in
    dist = distributed.from_env()
    device = distributed.resolve_device(config.device, dist)
    distributed.init_process_group(dist, device)
    try:
        return _fit(config, list(callbacks), dist, device)
    finally:
        distributed.destroy_process_group()


def _fit(config: TrainConfig, callbacks: list, dist: DistInfo, device) -> FitResult:
    started = time.perf_counter()
    config, resumed = _resolved(config, device)
    stored_name = read_facts(resumed.checkpoint).run_name if resumed else None
    run_name, made = config.run_name or stored_name, []
    if run_name is None and dist.is_main:  # the default name: a folder of its own, made here
        run_name, made = claim_timestamped_run(config.layout)
    run_name = distributed.broadcast_object(run_name)
    safe_name(run_name, "run name", UsageError)  # it becomes a folder under runs/
    config = dataclasses.replace(config, run_name=run_name)
    run_dir = config.layout.run_dir(run_name)
    if dist.is_main and resumed is not None:  # before the lock file too: nothing is written
        check_run_identity(run_dir, resumed)  # (checked again under the lock below)
    lock = RunLock(run_dir, made) if dist.is_main else contextlib.nullcontext()
    with lock, RawLock(config.layout, exclusive=False, command="gunctl train"):
        if dist.is_main and resumed is None and config.layout.last_checkpoint(run_name).exists():
            raise UsageError(
                f"{run_dir} already holds a run; pass --resume {run_name} or another --run-name"
            )
        if dist.is_main and resumed is not None:  # before anything is written to the run
            check_run_identity(run_dir, resumed)
            check_same_run(
                config.layout.last_checkpoint(run_name), resumed.checkpoint, resumed.path
            )
        if dist.is_main:
            remove_stale_temporaries(run_dir)
        prepared = prepare_split(config, dist)
        config = with_classes(config, class_names_of(prepared.split), resumed)
        if resumed and read_facts(resumed.checkpoint).split_checksum not in (
            None,
            prepared.checksum,
        ):
            log.warning("the split differs from the one %s was trained on", resumed.path)
        torch.manual_seed(config.seed + dist.rank)
        parts = build_parts(config, prepared, dist, device, resumed)
        if config.minutes is not None and parts.state.epoch == 0:  # fitted in its first epochs else
            from gunctl.core.budget import Budget

            parts.state.budget = Budget(config.minutes, started)
            batch = config.batch_size * dist.world_size  # for the first validation's guess
            parts.state.budget.val_guess = (len(parts.state.val_dataset), batch)
        main_callbacks = (
            [CheckpointSaver(), TensorBoardLogger(), *callbacks] if dist.is_main else []
        )
        _run(parts, main_callbacks, dist)
    if config.minutes is not None and dist.is_main:
        _report_budget(config.minutes, time.perf_counter() - started)
    return _fit_result(parts.state, dist, started)


def _resolved(config: TrainConfig, device) -> tuple[TrainConfig, Resumed | None]:
    """The run's whole config: a resumed run's from its checkpoint (with what may change on
    resume), a new run's with its recipe filled in; checked, relations included."""
    resumed = None
    if config.resume:
        path = resolve_resume(config)
        resumed = Resumed(load_checkpoint(path), path)
        require_full(path, resumed.checkpoint)
        config = resumed_train_config(resumed, config)
    else:
        config = recipes.resolve(config)
    if config.batch_size is None:
        config = dataclasses.replace(config, batch_size=default_batch_size(device))
    config.check()
    return config, resumed


def _fit_result(state: TrainState, dist: DistInfo, started: float) -> FitResult:
    config = state.config
    best = state.best_path if state.best_epoch is not None else None
    return FitResult(
        is_main=dist.is_main,
        run_name=state.run_name,
        run_dir=state.run_dir,
        last_checkpoint=state.last_path,
        best_checkpoint=best,
        model_copy=config.layout.best_model if best and state.promoted else None,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        epochs=state.epoch,
        history=state.history,
        seconds=time.perf_counter() - started,
        stopped_early=state.stopped_early,
        weights_origin=state.weights_origin,
        train_images=state.train_images,
        val_images=len(state.val_dataset),
        promotion=state.promotion,
    )


def _run(parts: TrainingParts, callbacks: list, dist: DistInfo) -> None:
    state = parts.state
    config = state.config  # the options that a --minutes budget does not change
    setup = TrainSetup(
        optimizer=state.optimizer,
        device=state.device,
        scheduler=state.scheduler,
        scaler=state.scaler,
        amp_dtype=amp_dtype(config.amp, state.device),
        cpu_bf16_backbone=cpu_bf16_backbone(config.amp, state.device),
        grad_clip=config.grad_clip,
        world_size=dist.world_size,
    )
    state.precision = setup.precision()
    # Hooks run on every rank (the callbacks that write are given on rank 0 only): EMA
    # first, the callbacks, then patience and the budget, which decide on rank 0 and
    # broadcast (core/hooks.py).
    hooks = [EmaHook(), *callbacks, PatienceHook(), BudgetHook(setup, dist)]
    fire = CallbackList(hooks, state)
    fire("on_fit_start")
    with _GracefulStop(second_stops_at_once=not dist.enabled) as stop:
        try:
            while state.epoch < state.config.epochs or _fitting_first_epoch(state):
                if distributed.any_rank(stop.requested, state.device):  # Ctrl-C during validation
                    raise KeyboardInterrupt
                _train_epoch(parts, fire, setup, stop)
                _validate_epoch(state, fire, parts.val_loader, setup, dist)
                if state.stopped_early:  # --patience (PatienceHook)
                    break
            _check_ranks_agree(state, dist)
            fire("on_fit_end")
        except DivergedError as exc:
            fire.exception(exc, resumable=False)
            last = state.last_path if state.last_path.exists() else "none yet"
            raise DivergedError(
                f"{exc}; last good checkpoint: {last}; try a lower --lr, a smaller "
                "--batch-size or --min-size"
            ) from None
        except KeyboardInterrupt as exc:
            fire.exception(exc, resumable=stop.graceful)
            raise
        except torch.cuda.OutOfMemoryError as exc:
            fire.exception(exc, resumable=True)
            raise TrainingError(
                f"out of GPU memory at epoch {state.epoch + 1}, batch {state.batches_done + 1}; "
                f"try a smaller --batch-size or --min-size (checkpoint: {_saved(state)})"
            ) from None
        except Exception as exc:
            fire.exception(exc, resumable=True)
            if stop.requested:  # e.g. a DataLoader worker that died of the same Ctrl-C
                raise KeyboardInterrupt from exc
            if is_out_of_memory(exc):  # the CPU's allocator (CUDA's is caught above)
                raise TrainingError(
                    f"out of memory at epoch {state.epoch + 1}, batch {state.batches_done + 1}; "
                    f"try a smaller --batch-size or --min-size (checkpoint: {_saved(state)})"
                ) from None
            raise


def _train_epoch(parts: TrainingParts, fire: CallbackList, setup: TrainSetup, stop) -> None:
    state = parts.state
    epoch = state.epoch
    parts.sampler.set_epoch(epoch, state.batches_done)
    state.meter = state.meter or LossMeter()
    fire("on_epoch_start")

    def on_step(step) -> None:
        state.batches_done = step.batch
        state.step = step.step
        fire("on_step_end", step)  # EMA, callbacks, then the budget (BudgetHook)

    try:
        state.step = train_one_epoch(
            parts.ddp_model,
            parts.train_loader,
            setup,
            epoch=epoch,
            step=state.step,
            first_batch=state.batches_done,
            total_batches=state.batches_per_epoch,
            meter=state.meter,
            on_step=on_step,
            should_stop=lambda: stop.requested,
        )
    except _BudgetSpent:
        log.info(
            "budget of %s min: the final epoch ends at step %d", state.config.minutes, state.step
        )
    state.train_summary = state.meter.summary()
    state.epoch, state.batches_done, state.meter = epoch + 1, 0, None


def _validate_epoch(state: TrainState, fire: CallbackList, val_loader, setup, dist) -> None:
    record: dict[str, Any] = {"epoch": state.epoch, "train": state.train_summary}
    record["lr"] = state.optimizer.param_groups[0]["lr"]
    result: EvalResult | None = None
    every = max(1, state.config.val_every)
    if (
        not _fitting_first_epoch(state)
        and state.epoch % every
        and state.epoch < state.config.epochs
    ):
        if dist.is_main:  # not validated this epoch: saved (resumable), shown without metrics
            record.update(val={}, seconds=record["train"]["seconds"])
            state.history.append(record)
        fire("on_epoch_end", record, None)  # every rank: the hooks decide together
        distributed.barrier()
        return
    if dist.is_main:
        fire("on_validation_start", len(state.val_dataset))
        result = evaluate(
            state.eval_model,
            val_loader,
            state.device,
            score_threshold=state.config.score_threshold,
            amp_dtype=setup.amp_dtype,
            on_batch=lambda n: fire("on_validation_batch", n),
            class_names=state.class_names,
        )
        record["val"] = result.metrics
        record["seconds"] = record["train"]["seconds"] + result.metrics["seconds"]
        state.history.append(record)
        score = result.metrics.get(SELECTION_METRIC)
        if score is not None and (state.best_metric is None or score > state.best_metric):
            state.best_metric, state.best_epoch = score, state.epoch
        fire("on_epoch_end", record, result)
    else:  # the hooks run on every rank (the callbacks only on rank 0, the one evaluating)
        fire("on_epoch_end", record, None)
    distributed.barrier()  # the other ranks wait while rank 0 evaluates and writes


def _fitting_first_epoch(state: TrainState) -> bool:
    """A --minutes run before its first epoch's count: it validates every epoch and goes on."""
    return state.budget is not None and not state.budget.planned


def _fit_budget(state: TrainState, setup: TrainSetup, dist: DistInfo, epoch_wall: float) -> None:
    """A --minutes run after an early epoch (``epoch_wall`` s, its validation, checkpoint and
    logging included): the count from the first epoch, then refits (core.budget), decided on
    rank 0."""
    plan = None
    if dist.is_main:
        budget, now = state.budget, time.perf_counter()
        val_seconds = state.history[-1]["val"].get("seconds", 0.0) if state.history else 0.0
        if not budget.planned:
            # an epoch 1 that ran a schedule of several epochs needs a second to finish it
            least = 1 if state.config.epochs <= 1 else 2
            plan = budget.final(now, val_seconds, least)
        else:
            plan = budget.refit(now, epoch_wall, val_seconds, state.epoch, state.config.epochs)
    plan = distributed.broadcast_object(plan)
    state.budget.planned = True  # on every rank: they loop and validate alike
    if plan is not None:
        _replan(state, setup, plan)


def _report_budget(minutes: float, seconds: float) -> None:
    """The wall time against a --minutes budget, at the end of the run."""
    from gunctl.core.budget import MARGIN_SECONDS, MARGIN_SHARE

    budget = 60.0 * minutes
    margin = max(MARGIN_SHARE * budget, MARGIN_SECONDS)
    log.info(
        "budget of %s min: %.1f s of wall time for %.0f s (%+.1f %%; the margin is %.0f s)",
        minutes,
        seconds,
        budget,
        100.0 * (seconds - budget) / budget,
        margin,
    )


def _hold_budget_step(state: TrainState, setup: TrainSetup, seconds: float, epoch: int) -> None:
    """After a step of a --minutes run: record its time; in the final epoch, end in time. A
    first epoch that would outlast the whole budget (a large data set, a tiny budget) becomes
    the final one, cut like it."""
    budget = state.budget
    budget.record_step(seconds)
    if not budget.planned:
        if not budget.out_of_time(time.perf_counter(), state.step, state.batches_per_epoch):
            return
        budget.planned = True  # this first epoch is the run: no count to fit after it
        from gunctl.core.budget import Plan

        _replan(state, setup, Plan(epochs=epoch + 1, val_every=1))
    if epoch + 1 >= state.config.epochs:  # the final epoch: end it in time
        _hold_budget(state, setup)


class BudgetHook(Callback):
    """--minutes: the budget's call sites as a hook on every rank (the plans are rank 0's,
    broadcast). In an epoch's steps: the first probes and the provisional plan, then the
    step's time and, in the final epoch, its end (``_hold_budget_step``); after an epoch: the
    epoch count fitted or refitted (``_fit_budget``) when the run goes on."""

    def __init__(self, setup: TrainSetup, dist: DistInfo):
        self.setup, self.dist = setup, dist
        self.began = 0.0

    def on_epoch_start(self, state) -> None:
        self.began = time.perf_counter()
        if state.budget is not None and state.epoch == 0:
            state.budget.epoch_started = self.began

    def on_step_end(self, state, step) -> None:
        budget = state.budget
        if budget is None:
            return
        if budget.probe(step.seconds):
            batch = state.config.batch_size * state.world_size
            plan = budget.provisional(
                time.perf_counter(), state.batches_per_epoch, len(state.val_dataset), batch
            )
            _replan(state, self.setup, distributed.broadcast_object(plan))
        _hold_budget_step(state, self.setup, step.seconds, state.epoch)

    def on_epoch_end(self, state, record, result) -> None:
        goes_on = state.epoch < state.config.epochs or _fitting_first_epoch(state)
        if state.budget is None or state.stopped_early or not goes_on:
            return
        _fit_budget(state, self.setup, self.dist, time.perf_counter() - self.began)


class _BudgetSpent(Exception):
    """The final epoch of a --minutes run stops here: its schedule ends at this step."""


def _hold_budget(state: TrainState, setup: TrainSetup) -> None:
    """After a step of a --minutes run's final epoch: when the planned end would overrun the
    budget (the machine slowed down, or the plan's last epoch is a part one), rebuild the
    schedule to end at the step that fits, and stop the epoch there (core.budget). Re-planned
    after every step, both ways: a machine that speeds up again moves the end back out."""
    budget = state.budget
    full = state.config.epochs * state.batches_per_epoch
    end = distributed.broadcast_object(  # rank 0's decision: every rank stops at one step
        budget.final_step(time.perf_counter(), state.step, full)
    )
    target = full if end is None else max(end, state.step)
    if target != (budget.end_step or full):
        budget.end_step = target if target < full else None
        state.scheduler = make_scheduler(
            state.optimizer,
            state.config,
            state.batches_per_epoch,
            last_step=state.step,
            total_steps=target,
            progress=schedule_progress(state.scheduler, state.step),
        )
        setup.scheduler = state.scheduler
    if state.step >= target:
        raise _BudgetSpent


def _replan(state: TrainState, setup: TrainSetup, plan) -> None:
    """Size the run to a --minutes plan: epochs, validation interval, schedule, EMA window."""
    state.config = dataclasses.replace(state.config, epochs=plan.epochs, val_every=plan.val_every)
    if state.budget is not None:
        state.budget.end_step = None  # a new count: the final epoch is planned afresh
    state.scheduler = make_scheduler(  # on from where the schedule stands: no jump
        state.optimizer,
        state.config,
        state.batches_per_epoch,
        last_step=state.step,
        progress=schedule_progress(state.scheduler, state.step),
    )
    setup.scheduler = state.scheduler
    if state.ema is not None and state.config.ema_decay is None:
        from gunctl.core.ema import fitted_decay

        state.ema.decay = fitted_decay(state.config.epochs * state.batches_per_epoch)
    log.info(
        "budget of %s min: %d epochs, validation every %d",
        state.config.minutes,
        plan.epochs,
        plan.val_every,
    )


def _check_ranks_agree(state: TrainState, dist: DistInfo) -> None:
    """Under torchrun, every rank must end with the same weights (DDP keeps them in step)."""
    if not dist.enabled:
        return
    agree, sums = distributed.parameters_agree(state.model, state.device)
    if not agree:
        raise TrainingError(f"the {dist.world_size} ranks ended with different weights ({sums})")
    log.info("parameters identical on all %d ranks (checksum %.6e)", dist.world_size, sums[0])


class _GracefulStop:
    """The first Ctrl-C (or SIGTERM) finishes the step, then stops with a resumable checkpoint;
    a second Ctrl-C stops at once without saving. Under torchrun the launcher forwards the
    signal again to its workers, so there every signal stops gracefully; torchrun's own
    timeout ends a stuck run."""

    def __init__(self, second_stops_at_once: bool = True):
        self.second_stops_at_once = second_stops_at_once
        self.requested = False
        self.graceful = False
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self.second_stops_at_once:
                self.graceful = False
                raise KeyboardInterrupt
            return
        self.requested = self.graceful = True
        hint = " (press Ctrl-C again to stop at once)" if self.second_stops_at_once else ""
        log.warning("stopping after this step%s", hint)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _saved(state: TrainState) -> str:
    return str(state.last_path) if state.saved_on_exit or state.last_path.exists() else "none yet"
