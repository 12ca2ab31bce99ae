"""Readers of data set layouts (Kaggle, YOLO, COCO, Pascal VOC) into one common record.

Each reader takes the source's files (``name -> SourceFile``, names relative to the source's
root, ``/``-separated) and returns a ``Source``: the format, the class names in the source's
order, and per image a ``Record`` (or a ``Problem`` for a file that is left out), in the order
that ingest reports them. Readers never open a path: file names found in annotations are
looked up in the listing, so nothing outside the source can be read.

Boxes stay unchecked here (pixels, ``x1 y1 x2 y2``, as the source gives them after conversion);
ingest runs the same checks (``labels.check_boxes``) on every format. The limits of the common
record are applied here, once, to what every reader returns (``read``): an image with more
than ``labels.MAX_BOXES`` boxes is left out and reported (``too_many_boxes``) in COCO, VOC and
YOLO as in the Kaggle layout, so ``raw/`` never holds a label file that its own readers
(``export-data``, training) would refuse. Image size (``--max-pixels``) and file names
(``paths.name_problem``) are checked by ingest on each record, whatever its format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from gunctl.config import DATA_FORMATS
from gunctl.core.labels import MAX_BOXES, Box, Problem
from gunctl.errors import UsageError

FORMATS = DATA_FORMATS  # declared with --format in gunctl/config.py
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class SourceFile:
    name: str  # relative to the source's root, e.g. "Images/1.jpeg" or "train/labels/1.txt"
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Annotation:
    box: Box  # pixels, x1 y1 x2 y2, unchecked
    class_name: str
    place: int | str  # 1-based line number, or a JSON path / XML element
    difficult: bool = False  # Pascal VOC's flag: kept, counted


@dataclass(frozen=True)
class Labels:
    file: str  # where the boxes came from, for problem lines
    annotations: list[Annotation]
    problems: list[Problem]
    usable: bool = True  # False: the image is left out (empty or unparseable label file)
    crowd: int = 0  # COCO iscrowd boxes left out


@dataclass(frozen=True)
class Record:
    stem: str  # the image's name in raw/ without extension; unique within a source
    image: SourceFile
    # labels(width, height): read after the image decodes (YOLO needs its size; problems keep
    # the order image, then label lines)
    labels: Callable[[int, int], Labels]
    split: str | None = None  # the source's own split ("train", "val", "test"), when it has one


@dataclass
class Source:
    format: str
    class_names: list[str]
    items: list[Record | Problem] = field(default_factory=list)


def detect(files: dict[str, SourceFile]) -> str | None:
    """The layout of a source, from its file names (and one label file's first line)."""
    from gunctl.core.formats import coco, kaggle, voc, yolo

    for module in (coco, voc, yolo, kaggle):
        if module.looks_like(files):
            return module.NAME
    return None


def read(format_name: str, files: dict[str, SourceFile], where: str) -> Source:
    """Dispatch to the reader of ``format_name``; ``where`` names the source in errors."""
    from gunctl.core.formats import coco, kaggle, voc, yolo

    readers = {m.NAME: m.read for m in (kaggle, yolo, coco, voc)}
    if format_name not in readers:
        raise UsageError(f"--format {format_name}: choose one of auto, {', '.join(FORMATS)}")
    source = readers[format_name](files, where)
    source.items = [
        dataclasses.replace(item, labels=_limited(item.labels))
        if isinstance(item, Record)
        else item
        for item in source.items
    ]
    return source


def _limited(labels: Callable[[int, int], Labels]) -> Callable[[int, int], Labels]:
    """``labels`` with the common record's box limit: more than MAX_BOXES boxes on one image
    leaves the image out, with one problem line (as a Kaggle label file of that many lines)."""

    def read(width: int, height: int) -> Labels:
        found = labels(width, height)
        count = len(found.annotations) + found.crowd
        if not found.usable or count <= MAX_BOXES:
            return found
        problem = Problem(found.file, "too_many_boxes", f"{count:,} boxes, limit {MAX_BOXES:,}")
        return Labels(found.file, [], [*found.problems, problem], usable=False)

    return read


def split_of(parts: list[str]) -> str | None:
    """The source split named by a folder on the path (train/, val/, valid/, test/)."""
    for part in parts:
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None


def stem_of(name: str) -> str:
    return name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def base_name(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]
