"""One checkpoint schema: built from the training state, written atomically, read with
``weights_only=True``, and read back only through this module.

A checkpoint never runs code when it is loaded: ``torch.load(weights_only=True)`` accepts
tensors and plain data only, and refuses anything else before it is built.
"""

from __future__ import annotations

import pickle
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from gunctl.core.fileio import write_with
from gunctl.errors import CheckpointError, first_line

if TYPE_CHECKING:
    from torch import nn

    from gunctl.core.state import TrainState

FORMAT = "gunctl-checkpoint"
SCHEMA = 1
REQUIRED = ("model", "config", "epoch", "class_names")
KINDS = ("full", "weights")  # full: resumable (optimizer, scheduler, RNG); weights: model only


class Checkpoint(TypedDict, total=False):
    """Every field of a gunctl checkpoint (schema 1). REQUIRED ones are checked on load."""

    format: str  # FORMAT
    schema: int  # SCHEMA
    kind: str  # KINDS: "full" (resumable) or "weights" (no optimizer, scheduler, scaler, RNG)
    created: str  # ISO time, UTC
    versions: dict[str, str]  # gunctl, torch, torchvision, python
    model: dict[str, Any]  # the state dict of the unwrapped model
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None  # fp16 on CUDA only
    epoch: int  # epochs completed
    step: int  # optimizer steps completed
    batches_done: int  # batches of the next epoch already trained (after an interrupt)
    partial_epoch: dict | None  # the LossMeter of that partial epoch
    interrupted: bool
    best_metric: float | None
    best_epoch: int | None
    selection_metric: str  # what best_metric measures (state.SELECTION_METRIC)
    metrics: dict | None  # the last epoch's record
    history: list[dict]  # every epoch's record
    config: dict[str, Any]  # the resolved TrainConfig, without its layout
    class_names: list[str]
    run_name: str
    weights_origin: str
    split_checksum: str
    manifest_checksum: str
    world_size: int
    rng: dict[str, Any]  # torch (and cuda) RNG states
    val_images: list[str]  # the images the run validated on (what `validate` scores)


@dataclass(frozen=True)
class CheckpointFacts:
    """The plain facts of a checkpoint, for reports, run listings and resume."""

    model: str  # the model's name
    epoch: int
    run_name: str | None
    weights_origin: str | None
    interrupted: bool
    created: str | None
    batches_done: int
    split_checksum: str | None
    manifest_checksum: str | None
    config: dict[str, Any]  # the stored TrainConfig as a dict

    def report(self) -> dict[str, Any]:
        """The facts that `gunctl validate` reports beside the metrics."""
        return {
            "model": self.model,
            "epoch": self.epoch,
            "run": self.run_name,
            "weights_origin": self.weights_origin,
            "interrupted": self.interrupted,
            "created": self.created,
        }


def checkpoint_payload(state: TrainState, interrupted: bool = False) -> Checkpoint:
    """What a checkpoint stores of ``state`` (save_checkpoint adds format and versions)."""
    from gunctl.core.state import SELECTION_METRIC

    return Checkpoint(
        model=state.model.state_dict(),
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict(),
        scaler=state.scaler.state_dict() if state.scaler is not None else None,
        epoch=state.epoch,
        step=state.step,
        batches_done=state.batches_done if interrupted else 0,
        partial_epoch=state.meter.state_dict() if interrupted and state.meter else None,
        interrupted=interrupted,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        selection_metric=SELECTION_METRIC,
        metrics=state.history[-1] if state.history else None,
        history=state.history,
        config=state.config_dict(),
        class_names=["background", *state.class_names],
        run_name=state.run_name,
        weights_origin=state.weights_origin,
        split_checksum=state.split_checksum,
        manifest_checksum=state.manifest_checksum,
        world_size=state.world_size,
        val_images=[item["image"] for item in state.val_dataset.items],
        rng=_rng_state(),
    )


FULL_ONLY = ("optimizer", "scheduler", "scaler", "rng", "partial_epoch")


def weights_payload(state: TrainState) -> Checkpoint:
    """A weights-only checkpoint (kind "weights"): what scoring, fine-tuning and export need,
    a third of the size of a full one with Adam."""
    full = checkpoint_payload(state)
    return Checkpoint(**{k: v for k, v in full.items() if k not in FULL_ONLY})


def read_facts(checkpoint: Checkpoint, path: Path | None = None) -> CheckpointFacts:
    """The facts of a loaded checkpoint; a CheckpointError names ``path`` when one is malformed."""
    try:
        config = checkpoint["config"]
        return CheckpointFacts(
            model=config["model"]["name"],
            epoch=int(checkpoint["epoch"]),
            run_name=checkpoint.get("run_name"),
            weights_origin=checkpoint.get("weights_origin"),
            interrupted=bool(checkpoint.get("interrupted")),
            created=checkpoint.get("created"),
            batches_done=int(checkpoint.get("batches_done", 0)),
            split_checksum=checkpoint.get("split_checksum"),
            manifest_checksum=checkpoint.get("manifest_checksum"),
            config=config,
        )
    except (KeyError, TypeError, ValueError) as exc:
        where = f"{path}: " if path else ""
        raise CheckpointError(f"{where}malformed checkpoint ({first_line(exc)})") from None


def stored_model_config(checkpoint: Checkpoint, path: Path) -> dict[str, Any]:
    """The stored ModelConfig as a dict; CheckpointError when it is missing."""
    try:
        return checkpoint["config"]["model"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: no model configuration in the checkpoint ({exc})") from None


def load_weights(model: nn.Module, checkpoint: Checkpoint, path: Path) -> None:
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({first_line(exc)})") from None


def restore_training(state: TrainState, checkpoint: Checkpoint, path: Path) -> None:
    """Put a checkpoint's weights, optimizer, scheduler, counters and RNG back into ``state``."""
    from gunctl.core.engine import LossMeter

    load_weights(state.model, checkpoint, path)
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


def save_checkpoint(path: Path, payload: Checkpoint, kind: str = "full") -> None:
    """Write ``payload`` plus format, schema, kind and versions to ``path`` atomically."""
    from gunctl import __version__

    full = {
        "format": FORMAT,
        "schema": SCHEMA,
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "gunctl": __version__,
            "torch": str(torch.__version__),
            "torchvision": _torchvision_version(),
            "python": platform.python_version(),
        },
        **payload,
    }
    write_with(Path(path), lambda handle: torch.save(full, handle))


def load_checkpoint(path: Path, mmap: bool = False) -> Checkpoint:
    """Load and check a gunctl checkpoint; every failure is a one-line CheckpointError.

    ``mmap`` maps the tensors instead of reading them: for reading a checkpoint's facts.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    _sniff(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{path}: refused: it holds objects other than tensors and plain data "
                "(unsafe to load, not a gunctl checkpoint)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or corrupt") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt ({first_line(exc, 160)})") from None
    return _check(path, data)


def _sniff(path: Path) -> None:
    """torch.save writes a zip (or, in old versions, a pickle): anything else is named for
    what it is before torch.load could call it corrupt or unsafe."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    if not head:
        raise CheckpointError(f"{path}: not a checkpoint: the file is empty (corrupt?)")
    try:
        head.decode("utf-8")
        kind = "a text file" if b"\x00" not in head else "unknown binary content"
    except UnicodeDecodeError:
        kind = "unknown binary content"
    raise CheckpointError(f"{path}: not a checkpoint ({kind}; gunctl writes .pth files)")


def _check(path: Path, data: Any) -> Checkpoint:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a gunctl checkpoint (a bare state dict or another tool's file)"
        )
    schema = data.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA:
        raise CheckpointError(
            f"{path}: checkpoint schema {schema} is newer than this gunctl reads ({SCHEMA}); "
            "upgrade gunctl"
        )
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    if data.get("kind", "full") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {data.get('kind')!r}")
    return data


def require_full(path: Path, checkpoint: dict[str, Any]) -> None:
    """Resuming needs the optimizer state that only a full checkpoint (last.pth) holds."""
    if checkpoint.get("kind", "full") != "full":
        raise CheckpointError(
            f"{path}: a weights-only checkpoint cannot resume training; resume from the run's "
            "last.pth (or its name), or fine-tune with --weights PATH"
        )


def _torchvision_version() -> str:
    import torchvision

    return str(torchvision.__version__)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
