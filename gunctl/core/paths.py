"""Safe paths: the one check for names that become a path component, and the one check that
keeps a path read from a state file, a checkpoint or a split inside its root.

Everything that comes from a file or a checkpoint is untrusted: a run name, an image name in
``split.json`` or a stem in a zip may hold ``..``, a separator, an absolute path or control
characters. ``safe_name`` refuses those; ``confine`` resolves symlinks and refuses anything
that ends up outside the root.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from gunctl.errors import DataError, GunctlError

MAX_NAME_CHARS = 200  # far above any run name or file name of the data set
MAX_NAME_BYTES = 255  # the file-name limit of ext4, XFS, APFS and NTFS (in UTF-8 bytes)
# Bidirectional overrides reorder what a terminal shows ("Trojan Source"); line and paragraph
# separators act as line breaks. None belongs in a file or run name.
_INVISIBLE = {
    "\u200e",
    "\u200f",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
}
_REFUSED_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}  # control, lone surrogate, line/paragraph sep.


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a single path component, or None when it can."""
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value or not value.strip():
        return "empty"
    if value in (".", ".."):
        return f"{value!r} is not a name"
    if "/" in value or "\\" in value:
        return "holds a path separator"
    if value.startswith("."):
        return "starts with '.' (hidden)"
    for char in value:
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char in _INVISIBLE:
            return f"holds the control character {char!r}"
    if len(value) > MAX_NAME_CHARS or len(value.encode("utf-8")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_CHARS} characters or {MAX_NAME_BYTES} bytes"
    return None


def safe_name(value: object, what: str, error: type[GunctlError] = DataError) -> str:
    """``value`` when it is a plain file or folder name; else ``error`` naming ``what``.

    ``what`` says where the name came from, e.g. "--run-name" or "ckpt.pth: run name".
    """
    problem = name_problem(value)
    if problem is not None:
        raise error(f"{what} {_shown(value)}: refused, {problem} (one plain name is needed)")
    return value  # type: ignore[return-value]


def confine(root: Path, relative: str | Path, what: str, error: type[GunctlError] = DataError):
    """``root / relative``, refused (``error``) when it resolves outside ``root``.

    Symlinks are followed on both sides: a root that is itself a symlink is fine, a link
    inside it that leads elsewhere is not.
    """
    root = Path(root)
    candidate = root / relative
    try:
        resolved_root = root.resolve()
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise error(f"{what} {_shown(str(candidate))}: cannot resolve ({exc})") from None
    if Path(relative).is_absolute() or not resolved.is_relative_to(resolved_root):
        raise error(f"{what} {_shown(str(candidate))}: refused, it leads outside {root}")
    return candidate


def _shown(value: object) -> str:
    text = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= 120 else text[:117] + "..."
