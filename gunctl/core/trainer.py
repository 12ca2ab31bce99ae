"""The epoch loop: set up data, model and optimizer, then train, evaluate and fire callbacks.

The math lives in ``engine``; files and displays live in ``callbacks``. ``fit`` runs the same
in one process and under torchrun (rank 0 evaluates, writes and reports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gunctl.config import (
    CLASS_NAMES,
    LR_SCHEDULES,
    OPTIMIZERS,
    SplitConfig,
    TrainConfig,
    to_dict,
    train_config_from_dict,
)
from gunctl.core import distributed
from gunctl.core.batching import EpochBatchSampler
from gunctl.core.callbacks import Callback, CheckpointSaver, TensorBoardLogger
from gunctl.core.checkpoint import load_checkpoint, require_resumable
from gunctl.core.dataset import GunDataset, make_loader
from gunctl.core.engine import (
    EvalResult,
    LossMeter,
    TrainSetup,
    amp_dtype,
    evaluate,
    train_one_epoch,
)
from gunctl.core.model import build_model, load_model_state, to_device_layout
from gunctl.core.runlock import RunLock
from gunctl.core.split import create_split, load_split, split_checksum, subset_split
from gunctl.core.transforms import EvalTransform, TrainTransform
from gunctl.errors import CheckpointError, DivergedError, TrainingError, UsageError

log = logging.getLogger("gunctl")
SELECTION_METRIC = "map_50"  # best.pth is the epoch with the highest val mAP@0.5


@dataclass
class TrainState:
    """Everything the callbacks may read, and what a checkpoint stores."""

    config: TrainConfig
    run_name: str
    run_dir: Path
    model: nn.Module  # unwrapped (never the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    device: torch.device
    weights_origin: str
    split_checksum: str
    manifest_checksum: str
    train_images: int
    val_dataset: GunDataset
    batches_per_epoch: int
    world_size: int = 1
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batches_done: int = 0  # batches completed in the epoch under way (after an interrupt)
    meter: LossMeter | None = None  # the running losses of the epoch under way
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    resumed_from: Path | None = None
    saved_on_exit: bool = False
    train_summary: dict = field(default_factory=dict)  # the last finished epoch's train losses
    promotion: str = ""  # what became of models/fasterrcnn.pth, in words (CheckpointSaver)
    promoted: bool = False  # this run's best is models/fasterrcnn.pth

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pth"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pth"

    def config_dict(self) -> dict[str, Any]:
        data = to_dict(self.config)
        data.pop("layout", None)  # where the files are is not part of what was trained
        return data

    def payload(self, interrupted: bool = False) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "batches_done": self.batches_done if interrupted else 0,
            "partial_epoch": self.meter.state_dict() if interrupted and self.meter else None,
            "interrupted": interrupted,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "selection_metric": SELECTION_METRIC,
            "metrics": self.history[-1] if self.history else None,
            "history": self.history,
            "config": self.config_dict(),
            "class_names": list(CLASS_NAMES),
            "run_name": self.run_name,
            "weights_origin": self.weights_origin,
            "split_checksum": self.split_checksum,
            "manifest_checksum": self.manifest_checksum,
            "world_size": self.world_size,
            "rng": _rng_state(),
        }

    def hparams(self) -> dict[str, Any]:
        flat = {k: v for k, v in self.config_dict().items() if k != "model"}
        flat.update({f"model.{k}": v for k, v in self.config_dict()["model"].items()})
        flat["weights_origin"] = self.weights_origin
        return {
            k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()
        }


@dataclass(frozen=True)
class FitResult:
    is_main: bool  # rank 0 (or the only process): the one that reports
    run_name: str
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    model_copy: Path | None
    best_metric: float | None
    best_epoch: int | None
    epochs: int
    history: list[dict]
    seconds: float
    weights_origin: str
    train_images: int
    val_images: int
    promotion: str = ""


def fit(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train per ``config``; under torchrun every rank calls this, rank 0 reports."""
    info = distributed.from_env()
    device = distributed.resolve_device(config.device, info)
    distributed.init_process_group(info, device)
    try:
        return _fit(config, list(callbacks), info, device)
    finally:
        distributed.destroy_process_group()


def _fit(config, callbacks, info, device) -> FitResult:
    started = time.perf_counter()
    checkpoint, resume_path = None, None
    if config.resume:
        resume_path = resolve_resume(config)
        checkpoint = load_checkpoint(resume_path)
        require_resumable(resume_path, checkpoint)
        config = _resumed_config(checkpoint, config)
    if config.batch_size is None:
        config = dataclasses.replace(config, batch_size=default_batch_size(device))
    _check_config(config)
    run_name = distributed.broadcast_object(
        config.run_name or (checkpoint or {}).get("run_name") or _timestamp()
    )
    config = dataclasses.replace(config, run_name=run_name)
    run_dir = config.layout.run_dir(run_name)
    lock = RunLock(run_dir) if info.is_main else contextlib.nullcontext()
    with lock:
        if info.is_main and checkpoint is None and (run_dir / "last.pth").exists():
            raise UsageError(
                f"{run_dir} already holds a run; pass --resume {run_name} or another --run-name"
            )
        if info.is_main:
            _remove_stale_temporaries(run_dir)
        split, manifest_checksum = _prepare_split(config, info)
        checksum = split_checksum(split)
        if checkpoint and checkpoint.get("split_checksum") not in (None, checksum):
            log.warning("the split differs from the one %s was trained on", resume_path)
        torch.manual_seed(config.seed + info.rank)
        state, train_loader, val_loader, sampler, ddp_model = _setup(
            config,
            checkpoint,
            resume_path,
            split,
            info,
            device,
            run_dir,
            checksum,
            manifest_checksum,
        )
        main_callbacks = (
            [CheckpointSaver(), TensorBoardLogger(), *callbacks] if info.is_main else []
        )
        _run(state, main_callbacks, train_loader, val_loader, sampler, ddp_model, info)
    best = state.best_path if state.best_epoch is not None else None
    return FitResult(
        is_main=info.is_main,
        run_name=run_name,
        run_dir=run_dir,
        last_checkpoint=state.last_path,
        best_checkpoint=best,
        model_copy=config.layout.best_model if best and state.promoted else None,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        epochs=state.epoch,
        history=state.history,
        seconds=time.perf_counter() - started,
        weights_origin=state.weights_origin,
        train_images=state.train_images,
        val_images=len(state.val_dataset),
        promotion=state.promotion,
    )


def _run(state, callbacks, train_loader, val_loader, sampler, ddp_model, info) -> None:
    config = state.config
    setup = TrainSetup(
        optimizer=state.optimizer,
        device=state.device,
        scheduler=state.scheduler,
        scaler=state.scaler,
        amp_dtype=amp_dtype(config.amp, state.device),
        grad_clip=config.grad_clip,
        world_size=info.world_size,
    )
    fire = _Firer(callbacks, state)
    fire("on_fit_start")
    with _GracefulStop(second_stops_at_once=not info.enabled) as stop:
        try:
            while state.epoch < config.epochs:
                if distributed.any_rank(stop.requested, state.device):  # Ctrl-C during validation
                    raise KeyboardInterrupt
                _train_epoch(state, fire, train_loader, sampler, ddp_model, setup, stop)
                _validate_epoch(state, fire, val_loader, setup, info)
            _check_ranks_agree(state, info)
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
            raise


def _train_epoch(state, fire, train_loader, sampler, ddp_model, setup, stop) -> None:
    epoch = state.epoch
    sampler.set_epoch(epoch, state.batches_done)
    state.meter = state.meter or LossMeter()
    fire("on_epoch_start")

    def on_step(info) -> None:
        state.batches_done = info.batch
        state.step = info.step
        fire("on_step_end", info)

    state.step = train_one_epoch(
        ddp_model,
        train_loader,
        setup,
        epoch=epoch,
        step=state.step,
        first_batch=state.batches_done,
        total_batches=state.batches_per_epoch,
        meter=state.meter,
        on_step=on_step,
        should_stop=lambda: stop.requested,
    )
    state.train_summary = state.meter.summary()
    state.epoch, state.batches_done, state.meter = epoch + 1, 0, None


def _validate_epoch(state, fire, val_loader, setup, info) -> None:
    record: dict[str, Any] = {"epoch": state.epoch, "train": state.train_summary}
    record["lr"] = state.optimizer.param_groups[0]["lr"]
    result: EvalResult | None = None
    if info.is_main:
        fire("on_validation_start", len(state.val_dataset))
        result = evaluate(
            state.model,
            val_loader,
            state.device,
            score_threshold=state.config.score_threshold,
            amp_dtype=setup.amp_dtype,
            on_batch=lambda n: fire("on_validation_batch", n),
        )
        record["val"] = result.metrics
        record["seconds"] = record["train"]["seconds"] + result.metrics["seconds"]
        state.history.append(record)
        score = result.metrics.get(SELECTION_METRIC)
        if score is not None and (state.best_metric is None or score > state.best_metric):
            state.best_metric, state.best_epoch = score, state.epoch
        fire("on_epoch_end", record, result)
    distributed.barrier()  # the other ranks wait while rank 0 evaluates and writes


class _Firer:
    """Calls a hook on every callback, in order."""

    def __init__(self, callbacks: list[Callback], state: TrainState):
        self.callbacks, self.state = callbacks, state

    def __call__(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self.state, *args)

    def exception(self, exc: BaseException, resumable: bool) -> None:
        for callback in self.callbacks:
            try:
                callback.on_exception(self.state, exc, resumable)
            except Exception as inner:  # the first error is the one to report
                log.warning("while stopping: %s", inner)


def _check_ranks_agree(state: TrainState, info) -> None:
    """Under torchrun, every rank must end with the same weights (DDP keeps them in step)."""
    if not info.enabled:
        return
    agree, sums = distributed.parameters_agree(state.model, state.device)
    if not agree:
        raise TrainingError(f"the {info.world_size} ranks ended with different weights ({sums})")
    log.info("parameters identical on all %d ranks (checksum %.6e)", info.world_size, sums[0])


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


# --- setup -----------------------------------------------------------------------------------


def resolve_resume(config: TrainConfig) -> Path:
    """``--resume`` takes a checkpoint path or a run name (its last.pth)."""
    value = config.resume or ""
    path = Path(value)
    if path.is_file():
        return path
    candidate = config.layout.run_dir(value) / "last.pth"
    if candidate.is_file():
        return candidate
    raise CheckpointError(
        f"{value}: no such checkpoint file, and no run of that name in {config.layout.runs}"
    )


def _resumed_config(checkpoint: dict, requested: TrainConfig) -> TrainConfig:
    """The stored config, with what may change on resume: epochs, device, workers, cache."""
    stored = train_config_from_dict(checkpoint["config"], requested.layout)
    config = dataclasses.replace(
        stored,
        epochs=requested.epochs,
        device=requested.device,
        workers=requested.workers,
        cache=requested.cache,
        resume=requested.resume,
        promote=requested.promote,
        run_name=checkpoint.get("run_name"),
    )
    done = int(checkpoint["epoch"])
    if config.epochs <= done and not checkpoint.get("batches_done"):
        raise UsageError(
            f"the run already has {done} epoch(s); pass --epochs above {done} to go on"
        )
    return config


def _check_config(config: TrainConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer {config.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise UsageError(
            f"--lr-schedule {config.lr_schedule}: choose one of {', '.join(LR_SCHEDULES)}"
        )
    if config.cache not in ("none", "ram"):
        raise UsageError(f"--cache {config.cache}: choose none or ram")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise UsageError(f"--lr must be a positive number, got {config.lr}")
    if config.model.min_size > config.model.max_size:
        raise UsageError(
            f"--min-size {config.model.min_size} is above --max-size {config.model.max_size}"
        )


def _prepare_split(config: TrainConfig, info) -> tuple[dict, str]:
    path = config.layout.split_file
    if info.is_main and not path.exists():
        made = create_split(
            SplitConfig(seed=config.seed, val_fraction=config.val_fraction, layout=config.layout)
        )
        log.warning(
            "no split at %s: made one (seed %d, %.0f%% validation, %d images)",
            path,
            config.seed,
            100 * config.val_fraction,
            len(made.split["train"]) + len(made.split["val"]),
        )
    distributed.barrier()
    split = load_split(path)
    if config.subset is not None:
        split = subset_split(split, config.subset, config.seed)
    if not split["train"] or not split["val"]:
        raise UsageError(f"{path}: the split needs images in both train and val")
    return split, split.get("manifest_checksum", "")


def _setup(config, checkpoint, resume_path, split, info, device, run_dir, checksum, manifest):
    train_set = GunDataset(
        config.layout.raw,
        split["train"],
        TrainTransform(0.5 if config.hflip else 0.0),
        seed=config.seed,
    )
    val_set = GunDataset(config.layout.raw, split["val"], EvalTransform())
    if config.cache == "ram":
        train_set.cache_all()
        if info.is_main:
            val_set.cache_all()
    built = _build_model(config, info)
    model = to_device_layout(built.model, device, config.channels_last)
    sampler = EpochBatchSampler(
        len(train_set),
        config.batch_size,
        seed=config.seed,
        rank=info.rank,
        world_size=info.world_size,
        aspect_ratios=train_set.aspect_ratios() if config.group_aspect_ratios else None,
    )
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, sampler.batches_per_epoch())
    dtype = amp_dtype(config.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    state = TrainState(
        config=config,
        run_name=config.run_name,
        run_dir=run_dir,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        device=device,
        weights_origin=built.weights_origin,
        split_checksum=checksum,
        manifest_checksum=manifest,
        train_images=len(train_set),
        val_dataset=val_set,
        batches_per_epoch=sampler.batches_per_epoch(),
        world_size=info.world_size,
    )
    if info.is_main:
        _check_free_space(run_dir, model, config)
    if checkpoint is not None:
        _restore(state, checkpoint, resume_path)
    ddp_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    train_loader = make_loader(
        train_set, config.workers, device, config.seed, batch_sampler=sampler
    )
    val_loader = make_loader(
        val_set, config.workers, device, config.seed, batch_size=config.batch_size
    )
    return state, train_loader, val_loader, sampler, ddp_model


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written checkpoints of a killed run (we hold the run's lock: none is in use)."""
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _check_free_space(run_dir: Path, model: nn.Module, config: TrainConfig) -> None:
    """Refuse to start when a checkpoint could not be written, rather than fail after an epoch."""
    import shutil

    from gunctl.errors import OutputError

    states = {"adam": 3, "adamw": 3, "sgd": 2}.get(config.optimizer, 3)  # weights + moments
    needed = sum(p.numel() * p.element_size() for p in model.parameters()) * states
    needed = int(needed * 2.2)  # the new file beside the old one, and some slack
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise OutputError(
            f"{run_dir}: {free / 2**20:.0f} MiB free, checkpoints need about "
            f"{needed / 2**20:.0f} MiB; free some space or pick another --out"
        )


def _build_model(config: TrainConfig, info):
    # Rank 0 fetches any weights first, so that the other ranks find them in the cache.
    if info.enabled and not info.is_main:
        distributed.barrier()
    built = build_model(config.model)
    if info.enabled and info.is_main:
        distributed.barrier()
    return built


def _restore(state: TrainState, checkpoint: dict, path: Path) -> None:
    load_model_state(state.model, checkpoint, path)
    try:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        state.scheduler.load_state_dict(checkpoint["scheduler"])
        if state.scaler is not None and checkpoint.get("scaler"):
            state.scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit ({exc})") from None
    state.epoch = int(checkpoint["epoch"])
    state.step = int(checkpoint.get("step", 0))
    state.batches_done = int(checkpoint.get("batches_done", 0))
    state.meter = (
        LossMeter.from_state(checkpoint.get("partial_epoch")) if state.batches_done else None
    )
    state.best_metric = checkpoint.get("best_metric")
    state.best_epoch = checkpoint.get("best_epoch")
    state.history = list(checkpoint.get("history") or [])
    state.resumed_from = path
    rng = checkpoint.get("rng") or {}
    if isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
    if state.device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state_all(rng["cuda"])


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
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(config.warmup_steps, steps_per_epoch)
    milestones = (0.7, 0.9)

    def factor(step: int) -> float:
        scale = (step + 1) / warmup if step < warmup else 1.0
        progress = min(1.0, step / total)
        if config.lr_schedule == "cosine":
            return scale * max(0.01, 0.5 * (1.0 + math.cos(math.pi * progress)))
        if config.lr_schedule == "step":
            return scale * 0.1 ** sum(progress >= m for m in milestones)
        return scale

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _saved(state: TrainState) -> str:
    return str(state.last_path) if state.saved_on_exit or state.last_path.exists() else "none yet"


def _timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")
