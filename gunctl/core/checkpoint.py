"""One checkpoint schema, written atomically and read with ``weights_only=True``.

A checkpoint never runs code when it is loaded: ``torch.load(weights_only=True)`` accepts
tensors and plain data only, and refuses anything else before it is built.
"""

from __future__ import annotations

import pickle
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from gunctl.core.fileio import write_with
from gunctl.errors import CheckpointError

FORMAT = "gunctl-checkpoint"
SCHEMA = 1
REQUIRED = ("model", "config", "epoch", "class_names")
KINDS = ("full", "weights")  # full: resumable (optimizer, scheduler, RNG); weights: model only


def save_checkpoint(path: Path, payload: dict[str, Any], kind: str = "full") -> None:
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


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
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
        raise CheckpointError(f"{path}: truncated or corrupt ({_first_line(exc)})") from None
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


def _check(path: Path, data: Any) -> dict[str, Any]:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]
