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


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` plus format, schema and versions to ``path`` atomically."""
    from gunctl import __version__

    full = {
        "format": FORMAT,
        "schema": SCHEMA,
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


def require_resumable(path: Path, checkpoint: dict[str, Any]) -> None:
    """A slim checkpoint (``gunctl export --format pth``) holds no optimizer state."""
    if checkpoint.get("slim") or "optimizer" not in checkpoint:
        raise CheckpointError(
            f"{path}: a slim checkpoint (gunctl export --format pth) has no optimizer state and "
            "cannot be resumed; resume from the run's last.pth, or fine-tune from it with "
            "--weights"
        )


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
    return data


def _torchvision_version() -> str:
    import torchvision

    return str(torchvision.__version__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]
