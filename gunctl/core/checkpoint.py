"""One checkpoint schema: built from the training state, written atomically, read with
``weights_only=True``, and read back only through this module.

A checkpoint never runs code when it is loaded: ``torch.load(weights_only=True)`` accepts
tensors and plain data only, and refuses anything else before it is built. It is still
untrusted data: every field is checked here (``FIELDS``, the stored config against the config
dataclasses' types and the rules declared with each option in config.py), and the run name,
which becomes a folder on resume, must be one plain name (``paths.safe_name``). Any mismatch
is one CheckpointError line.
"""

from __future__ import annotations

import pickle
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from gunctl.config import ALL_LOSS_KEYS, ModelConfig, TrainConfig
from gunctl.core.fileio import write_with
from gunctl.core.schema import check_fields, dataclass_spec, kind_problem
from gunctl.errors import CheckpointError, first_line
from gunctl.rules import check_stored

if TYPE_CHECKING:
    from torch import nn

    from gunctl.core.state import TrainState

FORMAT = "gunctl-checkpoint"
SCHEMA = 1
REQUIRED = ("model", "config", "epoch", "class_names")
FIELDS = {
    "model": "dict",
    "config": "dict",
    "epoch": "int>=0",
    "class_names": "list",
    "step": "int>=0?",
    "batches_done": "int>=0?",
    "interrupted": "bool?",
    "best_metric": "number?",
    "best_epoch": "int>=0?",
    "history": "list?",
    "metrics": "dict?",
    "run_name": "name?",
    "run_id": "str?",
    "mlflow_run_id": "str?",
    "weights_origin": "str?",
    "split_checksum": "str?",
    "manifest_checksum": "str?",
    "world_size": "int>=1?",
    "optimizer": "dict?",
    "scheduler": "dict?",
    "scaler": "dict?",
    "partial_epoch": "dict?",
    "rng": "dict?",
    "created": "str?",
}
_SHOWN = (*ALL_LOSS_KEYS, "loss", "map", "map_50", "images", "seconds", "images_per_s")  # displayed
HISTORY_SPEC = {"epoch": "int>=0", "lr": "number", "seconds": "number", "train": "dict"}
SCHEDULER_SPEC = {"last_epoch": "int?", "_step_count": "int>=0?", "base_lrs": "list?"}
METER_SPEC = {"sums": "dict", "steps": "int>=0", "images": "int>=0", "seconds": "number>=0"}
KINDS = ("full", "weights")  # full: resumable (optimizer, scheduler, RNG); weights: model only


class Checkpoint(TypedDict, total=False):
    """Every field of a gunctl checkpoint (schema 1). REQUIRED ones are checked on load."""

    format: str  # FORMAT
    schema: int  # SCHEMA
    kind: str  # KINDS: "full" (resumable) or "weights" (no optimizer, scheduler, scaler, RNG)
    created: str  # ISO time, UTC
    versions: dict[str, str]  # gunctl, torch, torchvision, python
    model: dict[str, Any]  # the state dict of the unwrapped model (its EMA when the run has one)
    # with --ema: {"train_model": the trained weights' state dict, "updates", "decay"}
    ema: dict[str, Any] | None
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
    run_id: str  # unique per run, kept across resumes: tells two runs of one name apart
    mlflow_run_id: str | None  # the MLflow run it logs to (core.tracking), kept across resumes
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

    ema = None
    if state.ema is not None:  # "model" is the EMA (what is used); the trained weights resume
        ema = {"train_model": state.model.state_dict(), **state.ema.state_dict()}
        ema.pop("module")
    return Checkpoint(
        model=state.eval_model.state_dict(),
        ema=ema,
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
        run_id=state.run_id,
        mlflow_run_id=state.mlflow_run_id,
        weights_origin=state.weights_origin,
        split_checksum=state.split_checksum,
        manifest_checksum=state.manifest_checksum,
        world_size=state.world_size,
        val_images=[item["image"] for item in state.val_dataset.items],
        rng=_rng_state(),
    )


FULL_ONLY = ("optimizer", "scheduler", "scaler", "rng", "partial_epoch", "ema")
ENVELOPE = ("format", "schema", "kind", "created", "versions")  # written by save_checkpoint
DEFAULT_THRESHOLD = 0.5  # where the checkpoint records no best-F1 threshold


def slim_payload(checkpoint: Checkpoint) -> Checkpoint:
    """A checkpoint without its resumable state (kind "weights"): the one slim key rule, for
    ``best.pth`` and ``gunctl export --format pth``."""
    dropped = (*FULL_ONLY, *ENVELOPE)  # save_checkpoint writes the envelope anew
    return Checkpoint(**{k: v for k, v in checkpoint.items() if k not in dropped})


# --- accessors: what a loaded checkpoint means, read the same way by every consumer ---------


def class_names(checkpoint: Checkpoint, path: Path | str) -> list[str]:
    """The label names, index = the model's label id, 0 = the background. A checkpoint without
    a usable list is refused (CheckpointError), never guessed: the names decide what a
    detection is called in every output."""
    names = checkpoint.get("class_names")
    if (
        not isinstance(names, list)
        or len(names) < 2
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise CheckpointError(f"{path}: class_names must list the background and the classes")
    return list(names)


def default_score_threshold(checkpoint: Checkpoint) -> tuple[float, str]:
    """The threshold that maximised F1 on the checkpoint's val split, else 0.5; and whence."""
    metrics = checkpoint.get("metrics") or {}
    for place in (metrics.get("val") or {}, metrics):
        value = place.get("best_f1_threshold") if isinstance(place, dict) else None
        if isinstance(value, (int, float)) and 0.0 <= value <= 1.0:
            return float(value), "best F1 on the checkpoint's val split"
    return DEFAULT_THRESHOLD, "default; the checkpoint records no best-F1 threshold"


def input_size(checkpoint: Checkpoint, path: Path | str) -> tuple[int, int]:
    """The (short side, long side limit) in pixels the model sees, as trained."""
    model = stored_model_config(checkpoint, Path(path))
    return int(model.get("min_size", 0)), int(model.get("max_size", 0))


def weights_payload(state: TrainState) -> Checkpoint:
    """A weights-only checkpoint (kind "weights"): what scoring, fine-tuning and export need,
    a third of the size of a full one with Adam."""
    return slim_payload(checkpoint_payload(state))


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
    except (RuntimeError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({first_line(exc)})") from None


def restore_training(state: TrainState, checkpoint: Checkpoint, path: Path) -> None:
    """Put a checkpoint's weights, optimizer, scheduler, counters and RNG back into ``state``."""
    from gunctl.core.engine import LossMeter

    ema = checkpoint.get("ema")
    if state.ema is not None and isinstance(ema, dict):  # the average, then the trained weights
        load_weights(state.ema.module, checkpoint, path)
        load_weights(state.model, {"model": ema.get("train_model")}, path)
        state.ema.updates, state.ema.decay = int(ema["updates"]), float(ema["decay"])
    else:
        load_weights(state.model, checkpoint, path)
    try:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        check_optimizer_state(state.optimizer, path)
        state.scheduler.load_state_dict(checkpoint["scheduler"])
        if state.scaler is not None and checkpoint.get("scaler"):
            state.scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as exc:
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
    state.run_id = checkpoint.get("run_id") or state.run_id
    state.mlflow_run_id = checkpoint.get("mlflow_run_id")
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
    if not path.is_file():  # a FIFO or a device would block or never end
        raise CheckpointError(f"{path}: not a regular file")
    _sniff(path)
    # mmap needs torch.save's zip format; a legacy pickle is read whole (and checked as such).
    mmap = mmap and _is_zip(path)
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


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


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
    check_fields(data, FIELDS, str(path), CheckpointError)
    _check_config(path, data["config"])
    _check_contents(path, data)
    return data


def _check_config(path: Path, config: dict) -> None:
    """The stored options: their types, then the rules declared with them in config.py (the
    command line's own), so a crafted value is one line naming the file and the option."""
    where = f"{path}: config"
    check_fields(config, dataclass_spec(TrainConfig), where, CheckpointError, True)
    check_fields(config, {"run_name": "name?"}, where, CheckpointError, True)  # a folder name
    check_stored(TrainConfig, config, where, CheckpointError)
    model = check_fields(config, {"model": "dict"}, where, CheckpointError)["model"]
    spec = dataclass_spec(ModelConfig)
    check_fields(model, spec, f"{where}.model", CheckpointError, allow_missing=True)
    check_fields(model, {"name": "str"}, f"{where}.model", CheckpointError)
    check_stored(ModelConfig, model, f"{where}.model", CheckpointError)


def _check_contents(path: Path, data: dict) -> None:
    """Tensors where tensors go, lists of the right things: what the trainer and the
    displays index into without further checks."""
    if not all(isinstance(v, torch.Tensor) for v in data["model"].values()):
        raise CheckpointError(f"{path}: 'model' must map names to tensors")
    if not all(isinstance(name, str) for name in data["class_names"]):
        raise CheckpointError(f"{path}: 'class_names' must be a list of strings")
    for index, record in enumerate(data.get("history") or []):
        check_fields(record, HISTORY_SPEC, f"{path}: history[{index}]", CheckpointError)
        for part in ("train", "val"):
            values = record.get(part) or {}
            shown = [values.get(key) for key in _SHOWN] if isinstance(values, dict) else [""]
            if not all(isinstance(v, (int, float)) or v is None for v in shown):
                raise CheckpointError(f"{path}: history[{index}].{part} must hold numbers")
    if data.get("partial_epoch") is not None:
        check_fields(data["partial_epoch"], METER_SPEC, f"{path}: partial_epoch", CheckpointError)
    scheduler = data.get("scheduler") or {}
    check_fields(scheduler, SCHEDULER_SPEC, f"{path}: scheduler", CheckpointError)
    for key in ("base_lrs", "_last_lr"):
        if not all(kind_problem(v, "number") is None for v in scheduler.get(key) or []):
            raise CheckpointError(f"{path}: scheduler {key!r} must hold numbers")
    rng = (data.get("rng") or {}).get("torch")
    if rng is not None and not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8):
        raise CheckpointError(f"{path}: 'rng.torch' must be a byte tensor")


def check_same_run(existing: Path, checkpoint: dict, source: Path) -> None:
    """Refuse to resume ``checkpoint`` (read from ``source``) into a run folder whose
    ``last.pth`` (``existing``) belongs to another run: it would be overwritten.

    Same run: the same ``run_id``; for checkpoints written before run ids, the same first
    epoch record and split.
    """
    existing = Path(existing)
    if not existing.is_file() or existing.resolve() == Path(source).resolve():
        return
    other = load_checkpoint(existing, mmap=True)
    if other.get("run_id") and checkpoint.get("run_id"):
        same = other["run_id"] == checkpoint["run_id"]
    else:
        first = lambda data: (data.get("history") or [None])[0]  # noqa: E731
        same = first(other) == first(checkpoint) and other.get("split_checksum") == checkpoint.get(
            "split_checksum"
        )
    if not same:
        raise CheckpointError(
            f"{existing.parent} holds another run than {source} (a different run id); "
            "resuming would overwrite it: rename that folder, or resume under another --out"
        )


def check_optimizer_state(optimizer, path: Path) -> None:
    """After ``load_state_dict``: every state tensor has its parameter's shape (a crafted
    state would otherwise fail at the first step, deep inside the optimizer)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise CheckpointError(
                        f"{path}: optimizer state {key!r} has shape {tuple(value.shape)}, "
                        f"its parameter {tuple(param.shape)}"
                    )


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
