"""Helpers for building test data (imported by tests; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def jpeg_bytes(width: int = 64, height: int = 48, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    colour = 128 if mode in ("L", "P") else (120,) * len(mode)
    Image.new(mode, (width, height), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tree(root: Path, images: dict[str, bytes], labels: dict[str, str | bytes]) -> Path:
    """A folder in the Kaggle layout: Images/<name> and Labels/<name>."""
    (root / "Images").mkdir(parents=True, exist_ok=True)
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / "Images" / name).write_bytes(data)
    for name, text in labels.items():
        data = text.encode() if isinstance(text, str) else text
        (root / "Labels" / name).write_bytes(data)
    return root
