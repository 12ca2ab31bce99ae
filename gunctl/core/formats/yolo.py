"""The YOLO layout (Ultralytics, Roboflow): ``images/`` beside ``labels/``, one
``class cx cy w h`` line per box, normalised to 0..1; class names from ``data.yaml``
(``names:`` as a list or an ``{id: name}`` mapping, read with PyYAML's safe_load) or
``classes.txt``. ``train/``, ``val/``, ``valid/`` or ``test/`` folders on the path are kept
as the source's split. An image without a label file, or with an empty one, is a negative
(as Ultralytics reads it). Pixel boxes are kept to 1/100 px, as raw/ labels are.
"""

from __future__ import annotations

import re

from gunctl.core import tree
from gunctl.core.formats import (
    Annotation,
    Labels,
    Record,
    Source,
    SourceFile,
    base_name,
    split_of,
    stem_of,
)
from gunctl.core.labels import Problem
from gunctl.errors import DataError

NAME = "yolo"
_NAME_FILES = ("data.yaml", "data.yml", "classes.txt", "obj.names")


def looks_like(files: dict[str, SourceFile]) -> bool:
    if not any(_is_label(n) for n in files):
        return False
    if any(base_name(n).lower() in _NAME_FILES for n in files):
        return True
    return _first_line_has_five_numbers(files)


def read(files: dict[str, SourceFile], where: str) -> Source:
    names = _class_names(files, where)
    source = Source(NAME, names)
    labels = {_label_key(n): f for n, f in files.items() if _is_label(n)}
    seen: dict[str, str] = {}
    images = [f for n, f in sorted(files.items()) if _is_image_path(n)]
    records = []
    for image in images:
        if tree.is_hidden(image.name):
            continue
        if not tree.is_image_name(image.name):
            source.items.append(Problem(image.name, "not_an_image"))
            continue
        stem = stem_of(image.name)
        if stem in seen:
            source.items.append(Problem(image.name, "duplicate_stem", f"same stem as {seen[stem]}"))
            continue
        seen[stem] = image.name
        label = labels.pop(_image_key(image.name), None)
        split = split_of(image.name.split("/")[:-1])
        records.append(Record(stem, image, _labels_reader(label, image.name, names), split))
    for label in sorted(labels.values(), key=lambda f: f.name):
        if not tree.is_hidden(label.name):
            source.items.append(Problem(label.name, "label_without_image"))
    source.items += sorted(records, key=lambda r: tree.natural_key(r.stem))
    return source


def _class_names(files: dict[str, SourceFile], where: str) -> list[str]:
    found = sorted(
        (n for n in files if base_name(n).lower() in _NAME_FILES),
        key=lambda n: (n.count("/"), _NAME_FILES.index(base_name(n).lower()), n),
    )
    if not found:
        raise DataError(
            f"{where}: YOLO labels (class cx cy w h) but no data.yaml or classes.txt names "
            "the classes; add a data.yaml with `names: [...]`"
        )
    name = found[0]
    text = _text(files[name])
    if name.lower().endswith((".yaml", ".yml")):
        return _yaml_names(text, f"{where}/{name}")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"{where}/{name}: no class names in it")
    return names


def _yaml_names(text: str, where: str) -> list[str]:
    import yaml

    from gunctl.core.fileio import load_yaml

    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{where}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{where}: names: the class ids must be 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{where}: no `names:` list or {{id: name}} mapping")
    if not all(isinstance(n, (str, int, float)) for n in names):
        raise DataError(f"{where}: names: each class name must be text")
    result = [str(n).strip() for n in names]
    if len(set(result)) != len(result) or not all(result):
        raise DataError(f"{where}: names: class names must be unique and non-empty")
    return result


def _labels_reader(label: SourceFile | None, image_name: str, names: list[str]):
    def labels(width: int, height: int) -> Labels:
        if label is None:
            return Labels(image_name, [], [])  # no label file: a negative image
        return parse_yolo(label.read(), label.name, names, width, height)

    return labels


def parse_yolo(data: bytes, name: str, names: list[str], width: int, height: int) -> Labels:
    """``class cx cy w h`` lines into pixel boxes; bad lines dropped and reported."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Labels(name, [], [Problem(name, "empty_label", "not UTF-8 text")], usable=False)
    annotations, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        values = _numbers(parts[1:]) if len(parts) == 5 else None
        if values is None or not re.fullmatch(r"\d+", parts[0]):
            problems.append(Problem(name, "malformed_line", f"{line.strip()[:40]!r}", number))
            continue
        if int(parts[0]) >= len(names):
            detail = f"class {parts[0]}, but the names list has {len(names)} class(es)"
            problems.append(Problem(name, "unknown_class", detail, number))
            continue
        if not all(0.0 <= v <= 1.0 for v in values):
            detail = f"{' '.join(parts[1:])[:40]!r}"
            problems.append(Problem(name, "not_normalised", detail, number))
            continue
        cx, cy, w, h = values
        box = (
            round((cx - w / 2) * width, 2),
            round((cy - h / 2) * height, 2),
            round((cx + w / 2) * width, 2),
            round((cy + h / 2) * height, 2),
        )
        annotations.append(Annotation(box, names[int(parts[0])], number))
    return Labels(name, annotations, problems)


def _numbers(parts: list[str]) -> list[float] | None:
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    return values if all(v == v and abs(v) != float("inf") for v in values) else None


def _is_image_path(name: str) -> bool:
    return "/" in name and any(p.lower() == "images" for p in name.split("/")[:-1])


def _is_label(name: str) -> bool:
    return name.lower().endswith(".txt") and any(
        p.lower() == "labels" for p in name.split("/")[:-1]
    )


def _image_key(name: str) -> str:
    """images -> labels in the last such folder, extension dropped (Ultralytics' rule)."""
    parts = name.split("/")
    index = max(i for i, p in enumerate(parts[:-1]) if p.lower() == "images")
    parts[index] = "labels"
    parts[-1] = stem_of(parts[-1])
    return "/".join(parts).lower()


def _label_key(name: str) -> str:
    parts = name.split("/")
    index = max(i for i, p in enumerate(parts[:-1]) if p.lower() == "labels")
    parts[index] = "labels"
    parts[-1] = stem_of(parts[-1])
    return "/".join(parts).lower()


def _first_line_has_five_numbers(files: dict[str, SourceFile]) -> bool:
    for name in sorted(n for n in files if _is_label(n)):
        text = _text(files[name])
        lines = [line.split() for line in text.splitlines() if line.strip()]
        if lines:
            return len(lines[0]) == 5 and _numbers(lines[0]) is not None
    return False


def _text(file: SourceFile) -> str:
    return file.read().decode("utf-8-sig", errors="replace")
