"""The Kaggle layout: ``Images/<stem>.<ext>`` beside ``Labels/<stem>.txt`` (count, then
``x1 y1 x2 y2`` in pixels per line); one class, ``gun``. Paired by stem, numeric stems in
numeric order (``tree``); the label rules live in ``labels``."""

from __future__ import annotations

import re

from gunctl.core import tree
from gunctl.core.formats import Annotation, Labels, Record, Source, SourceFile
from gunctl.core.labels import Problem, parse_label

NAME = "kaggle"
CLASS_NAME = "gun"  # the data set's one class (config.CLASS_NAMES)
_IMAGES = re.compile(r"(^|/)images/[^/]+$", re.IGNORECASE)
_LABELS = re.compile(r"(^|/)labels/[^/]+\.txt$", re.IGNORECASE)


def looks_like(files: dict[str, SourceFile]) -> bool:
    names = list(files)
    return any(_IMAGES.search(n) for n in names) and any(_LABELS.search(n) for n in names)


def read(files: dict[str, SourceFile], where: str) -> Source:
    """``files`` named ``Images/...`` and ``Labels/...`` (ingest lists them so)."""
    source = Source(NAME, [CLASS_NAME])
    images, labels = _index_files(list(files.values()), source.items)
    for stem in sorted(set(images) | set(labels), key=tree.natural_key):
        image, label = images.get(stem), labels.get(stem)
        if label is None:
            source.items.append(Problem(image.name, "image_without_label"))
        elif image is None:
            source.items.append(Problem(label.name, "label_without_image"))
        else:
            source.items.append(Record(stem, image, _labels_reader(label)))
    return source


def _labels_reader(label: SourceFile):
    def labels(width: int, height: int) -> Labels:
        parsed = parse_label(label.read(), label.name)
        annotations = [Annotation(box, CLASS_NAME, line) for box, line in parsed.boxes]
        return Labels(label.name, annotations, parsed.problems, parsed.usable)

    return labels


def _index_files(files: list[SourceFile], problems: list):
    images: dict[str, SourceFile] = {}
    labels: dict[str, SourceFile] = {}
    for file in sorted(files, key=lambda f: f.name):
        if tree.is_hidden(file.name):
            continue
        is_image_folder = file.name.startswith(tree.IMAGES + "/")
        if is_image_folder and not tree.is_image_name(file.name):
            problems.append(Problem(file.name, "not_an_image"))
            continue
        if not is_image_folder and not tree.is_label_name(file.name):
            continue  # README files and the like beside the labels
        target = images if is_image_folder else labels
        stem = tree.stem_of(file.name)
        if stem in target:
            problems.append(
                Problem(file.name, "duplicate_stem", f"same stem as {target[stem].name}")
            )
            continue
        target[stem] = file
    return images, labels
