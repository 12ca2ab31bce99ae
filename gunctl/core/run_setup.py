"""A training run's set-up: which checkpoint it resumes, its config, split, classes, data,
model and optimizer, and its run folder (claimed, checked against the checkpoint it resumes).

``trainer.fit`` calls these once, before the loop; the loop and its hooks live in ``trainer``
and ``hooks``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gunctl.config import (
    WEIGHT_CHOICES,
    SplitConfig,
    TrainConfig,
    resumed_config,
    train_config_from_dict,
)
from gunctl.core import distributed, recipes
from gunctl.core.batching import EpochBatchSampler
from gunctl.core.checkpoint import read_facts, restore_training
from gunctl.core.dataset import GunDataset, make_loader
from gunctl.core.distributed import DistInfo
from gunctl.core.engine import amp_dtype
from gunctl.core.manifest import class_names_of
from gunctl.core.model import build_model, to_device_layout
from gunctl.core.optim import make_optimizer, make_scheduler
from gunctl.core.paths import name_problem
from gunctl.core.split import create_split, open_split, split_checksum, subset_split
from gunctl.core.state import TrainState
from gunctl.core.transforms import EvalTransform, make_train_transform
from gunctl.errors import CheckpointError, UsageError

log = logging.getLogger("gunctl")


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a run goes on from, and where it was read."""

    checkpoint: dict
    path: Path


@dataclass(frozen=True)
class PreparedSplit:
    split: dict
    checksum: str  # of the split as trained on (after --subset)
    manifest_checksum: str  # of the ingested data the split was made from


@dataclass
class TrainingParts:
    """What the loop runs on, built once by ``build_parts``."""

    state: TrainState
    train_loader: Any
    val_loader: Any
    sampler: EpochBatchSampler
    ddp_model: nn.Module  # the DDP wrapper under torchrun, else the model itself


def resolve_resume(config: TrainConfig) -> Path:
    """``--resume`` takes a checkpoint path or a run name (its last checkpoint)."""
    value = config.resume or ""
    path = Path(value)
    if path.is_file():
        return path
    candidate = config.layout.last_checkpoint(value)
    if name_problem(value) is None and candidate.is_file():
        return candidate
    raise CheckpointError(
        f"{value}: no such checkpoint file, and no run of that name in {config.layout.runs}"
    )


def resumed_train_config(resumed: Resumed, requested: TrainConfig) -> TrainConfig:
    """The stored config, with what may change on resume (config.RESUMABLE_OPTIONS)."""
    facts = read_facts(resumed.checkpoint)
    stored = train_config_from_dict(facts.config, requested.layout)
    try:
        stored.check()  # a checkpoint is untrusted: its values pass the command line's rules
    except UsageError as exc:
        raise CheckpointError(f"{resumed.path}: {exc}") from None
    config = dataclasses.replace(resumed_config(stored, requested), run_name=facts.run_name)
    if stored.minutes is not None and "epochs" not in requested.explicit:
        config = dataclasses.replace(config, epochs=stored.epochs)  # the budget's fitted count
    if config.epochs <= facts.epoch and not facts.batches_done:
        raise UsageError(
            f"the run already has {facts.epoch} epoch(s); pass --epochs above {facts.epoch} "
            "to go on"
        )
    return config


def with_classes(config: TrainConfig, names: list[str], resumed: Resumed | None) -> TrainConfig:
    """One model output per class plus the background; a resumed run keeps its classes."""
    if resumed is not None:
        stored = list(resumed.checkpoint.get("class_names") or [])[1:]
        if stored and stored != names:
            raise CheckpointError(
                f"{resumed.path}: trained on classes {', '.join(stored)}, but the data set has "
                f"{', '.join(names)}; ingest with --classes or start a new run"
            )
    model = dataclasses.replace(config.model, num_classes=len(names) + 1)
    return dataclasses.replace(config, model=model)


def prepare_split(config: TrainConfig, dist: DistInfo) -> PreparedSplit:
    path = config.layout.split_file
    if dist.is_main and not path.exists():
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
    split, _ = open_split(config.layout, stale="refuse")
    if config.subset is not None:
        split = subset_split(split, config.subset, config.seed)
    if not split["train"] or not split["val"]:
        raise UsageError(f"{path}: the split needs images in both train and val")
    return PreparedSplit(split, split_checksum(split), split.get("manifest_checksum", ""))


def build_parts(
    config: TrainConfig, prepared: PreparedSplit, dist: DistInfo, device, resumed: Resumed | None
) -> TrainingParts:
    train_set, val_set = _datasets(config, prepared.split, dist)
    if config.fit_anchors and not config.model.anchor_sizes:
        config = recipes.fit_anchors(config, train_set.boxes_and_sizes())
    built = _build_model(config, dist, resumed)
    model = to_device_layout(built.model, device, config.channels_last)
    sampler = EpochBatchSampler(
        len(train_set),
        config.batch_size,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        aspect_ratios=train_set.aspect_ratios() if config.group_aspect_ratios else None,
    )
    optimizer = make_optimizer(model, config)
    dtype = amp_dtype(config.amp, device)
    state = TrainState(
        config=config,
        run_name=config.run_name,
        run_dir=config.layout.run_dir(config.run_name),
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config, sampler.batches_per_epoch()),
        scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        device=device,
        weights_origin=built.weights_origin,
        split_checksum=prepared.checksum,
        manifest_checksum=prepared.manifest_checksum,
        train_images=len(train_set),
        val_dataset=val_set,
        batches_per_epoch=sampler.batches_per_epoch(),
        world_size=dist.world_size,
        class_names=class_names_of(prepared.split),
    )
    if dist.is_main:
        _check_free_space(state.run_dir, model, config)
    if config.ema:
        from gunctl.core.ema import ModelEma, fitted_decay

        decay = config.ema_decay or fitted_decay(config.epochs * state.batches_per_epoch)
        state.ema = ModelEma(model, decay)
    if resumed is not None:
        restore_training(state, resumed.checkpoint, resumed.path)
    ddp_model = _wrap_ddp(model, dist, device)
    return TrainingParts(
        state=state,
        train_loader=make_loader(
            train_set, config.workers, device, config.seed, batch_sampler=sampler
        ),
        val_loader=make_loader(
            val_set, config.workers, device, config.seed, batch_size=config.batch_size
        ),
        sampler=sampler,
        ddp_model=ddp_model,
    )


def _datasets(config: TrainConfig, split: dict, dist: DistInfo) -> tuple[GunDataset, GunDataset]:
    train_set = GunDataset(
        config.layout.raw, split["train"], make_train_transform(config), seed=config.seed
    )
    val_set = GunDataset(config.layout.raw, split["val"], EvalTransform())
    if config.cache == "ram":
        train_set.cache_all()
        if dist.is_main:
            val_set.cache_all()
    return train_set, val_set


def _wrap_ddp(model: nn.Module, dist: DistInfo, device) -> nn.Module:
    """Under torchrun, the DDP wrapper that trains ``model``; else ``model`` itself."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written checkpoints of a killed run (we hold the run's lock: none is in use)."""
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _check_free_space(run_dir: Path, model: nn.Module, config: TrainConfig) -> None:
    """Refuse to start when a checkpoint could not be written, rather than fail after an epoch."""
    import shutil

    from gunctl.errors import OutputError

    states = {"adam": 3, "adamw": 3, "sgd": 2}.get(config.optimizer, 3)  # weights + moments
    states += 1 if config.ema else 0  # the average beside the trained weights
    needed = sum(p.numel() * p.element_size() for p in model.parameters()) * states
    needed = int(needed * 2.2)  # the new file beside the old one, and some slack
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise OutputError(
            f"{run_dir}: {free / 2**20:.0f} MiB free, checkpoints need about "
            f"{needed / 2**20:.0f} MiB; free some space or pick another --out"
        )


def _build_model(config: TrainConfig, dist: DistInfo, resumed: Resumed | None):
    model_config = config.model
    if resumed is not None and model_config.weights not in WEIGHT_CHOICES:
        # Resuming a fine-tuning run: its checkpoint holds the weights, and the checkpoint it
        # started from (same architecture, not read again) may be gone since.
        model_config = dataclasses.replace(model_config, weights="none")
    # Rank 0 fetches any weights first, so that the other ranks find them in the cache.
    if dist.enabled and not dist.is_main:
        distributed.barrier()
    built = build_model(model_config)
    if dist.enabled and dist.is_main:
        distributed.barrier()
    if resumed is not None:  # where the run's weights first came from, as recorded
        origin = read_facts(resumed.checkpoint).weights_origin or built.weights_origin
        built = dataclasses.replace(built, weights_origin=origin)
    return built


def _timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def claim_timestamped_run(layout) -> tuple[str, list[Path]]:
    """The default run name (the time, to the second), its folder made exclusively here: a
    second run started in the same second takes ``-2``, ``-3``... (never the same folder).
    Returns the name and the folders made (removed again if the run writes nothing)."""
    import os

    from gunctl.core.fileio import make_dirs
    from gunctl.errors import cannot_write

    base = _timestamp()
    try:
        made = make_dirs(layout.runs)
        for number in range(1, 1000):
            name = base if number == 1 else f"{base}-{number}"
            try:
                os.mkdir(layout.run_dir(name))
            except FileExistsError:
                continue
            return name, [*made, layout.run_dir(name)]
    except OSError as exc:
        raise cannot_write(layout.runs, exc) from None
    raise UsageError(f"{layout.runs}: no free run name for {base}; pass --run-name")


def check_run_identity(run_dir: Path, resumed: Resumed) -> None:
    """A resume writes into ``run_dir`` only when it is the checkpoint's own run: its folder,
    or one holding the same run (``check_same_run`` compares the run ids of their last.pth).
    A folder of files of a run without a last.pth to compare (a run killed in its first
    epoch, or one whose last.pth was removed) is refused, never mixed with another run."""
    if not run_dir.is_dir() or resumed.path.resolve().parent == run_dir.resolve():
        return
    if (run_dir / "last.pth").exists():
        return  # compared by check_same_run
    files = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    if files:
        raise CheckpointError(
            f"{run_dir} holds files of another run ({', '.join(files[:3])}) and no last.pth "
            f"to compare with {resumed.path}; resuming would mix them: rename that folder, or "
            "resume under another --out"
        )
