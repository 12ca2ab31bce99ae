"""The Kaggle folder layout: ``Images/<stem>.<ext>`` beside ``Labels/<stem>.txt``.

Images and labels are paired by file stem, never by sorted position; numeric stems
sort numerically (``2`` before ``10``).
"""

from __future__ import annotations

from pathlib import Path

IMAGES = "Images"
LABELS = "Labels"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")  # compared case-insensitively
LABEL_EXTENSION = ".txt"


def natural_key(stem: str) -> tuple[int, int, str]:
    """Sort key: numeric stems (ASCII digits only: ``²`` is a digit to Python, not a number
    to ``int``) first and by value, then the rest by name."""
    return (0, int(stem), "") if stem.isascii() and stem.isdecimal() else (1, 0, stem)


def stem_of(name: str) -> str:
    return name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_label_name(name: str) -> bool:
    return name.lower().endswith(LABEL_EXTENSION)


def is_hidden(name: str) -> bool:
    """Dotfiles (.DS_Store, ._1.jpeg from macOS zips) are not data and are not reported."""
    return name.rsplit("/", 1)[-1].startswith(".")


def find_root(path: Path) -> Path | None:
    """The folder holding ``Images/`` and ``Labels/``: ``path`` itself or its only sub-folder."""
    if _has_layout(path):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not is_hidden(p.name)]
    if len(subdirs) == 1 and _has_layout(subdirs[0]):
        from gunctl.core.paths import confine

        return confine(path, subdirs[0].name, "source folder")
    return None


def child_dir(root: Path, name: str) -> Path:
    """``root/name``, matching the folder name case-insensitively (``images/`` works too).

    A folder that is a symlink leading outside ``root`` is refused (DataError).
    """
    from gunctl.core.paths import confine

    for candidate in root.iterdir():
        if candidate.is_dir() and candidate.name.lower() == name.lower():
            return confine(root, candidate.name, "source folder")
    return root / name


def _has_layout(path: Path) -> bool:
    names = {p.name.lower() for p in path.iterdir() if p.is_dir()}
    return IMAGES.lower() in names and LABELS.lower() in names
