"""The COCO layout: an ``instances*.json`` (or Roboflow's ``_annotations.coco.json``) with
its images. ``bbox`` is ``[x, y, width, height]`` in pixels; category ids are mapped to their
names (classes in id order; a Roboflow super-category without boxes is not a class);
``iscrowd`` boxes are left out and counted. Image files are looked up in the source's own
listing (beside the JSON, in an ``images/`` folder, or by a unique base name), never opened by
the path the JSON gives. Several JSON files in ``train/``, ``valid/``, ``test/`` folders keep
that split.
"""

from __future__ import annotations

import json
import math
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

NAME = "coco"
_JSON = re.compile(r"^(instances.*|_annotations\.coco|.*annotations.*coco.*)\.json$", re.I)


def looks_like(files: dict[str, SourceFile]) -> bool:
    return bool(_annotation_files(files))


def read(files: dict[str, SourceFile], where: str) -> Source:
    found = _annotation_files(files)
    if not found:
        raise DataError(f"{where}: no instances*.json or _annotations.coco.json (COCO layout)")
    documents = [(name, _load(files[name], where)) for name in found]
    names = _class_names(documents, where)
    source = Source(NAME, names)
    images = _image_index(files)
    seen: dict[str, str] = {}
    records = []
    for name, document in documents:
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        split = split_of(name.split("/")[:-1])
        records_of = _records(name, document, folder, split, images, names, source.items, where)
        for record in records_of:
            if record.stem in seen:
                detail = f"same stem as {seen[record.stem]}"
                source.items.append(Problem(record.image.name, "duplicate_stem", detail))
                continue
            seen[record.stem] = record.image.name
            records.append(record)
    source.items += sorted(records, key=lambda r: tree.natural_key(r.stem))
    return source


def _annotation_files(files: dict[str, SourceFile]) -> list[str]:
    return sorted(n for n in files if _JSON.match(base_name(n)) and not tree.is_hidden(n))


def _load(file: SourceFile, where: str) -> dict:
    try:
        document = json.loads(file.read().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(f"{where}/{file.name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}/{file.name}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
        ) from None
    except RecursionError:
        raise DataError(f"{where}/{file.name}: not valid COCO JSON (nested too deeply)") from None
    if not isinstance(document, dict):
        raise DataError(f"{where}/{file.name}: not a COCO object (expected {{...}} at the top)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key, []), list):
            raise DataError(f"{where}/{file.name}: {key}: expected a list")
    return document


def _class_names(documents: list[tuple[str, dict]], where: str) -> list[str]:
    by_id: dict[int, str] = {}
    parents: set[str] = set()
    used: set[int] = set()
    for name, document in documents:
        for i, category in enumerate(document.get("categories", [])):
            cid = category.get("id") if isinstance(category, dict) else None
            cname = category.get("name") if isinstance(category, dict) else None
            if not isinstance(cid, int) or not isinstance(cname, str) or not cname.strip():
                raise DataError(f"{where}/{name}: categories[{i}]: needs an integer id and a name")
            if by_id.get(cid, cname) != cname:
                raise DataError(
                    f"{where}/{name}: categories[{i}].id {cid} is both {by_id[cid]!r} and {cname!r}"
                )
            by_id[cid] = cname.strip()
            parent = category.get("supercategory")
            if isinstance(parent, str) and parent != cname:
                parents.add(parent)
        used |= {
            _key(a.get("category_id"))
            for a in document.get("annotations", [])
            if isinstance(a, dict)
        }
    names = [by_id[c] for c in sorted(by_id) if c in used or by_id[c] not in parents]
    if len(set(names)) != len(names):
        raise DataError(f"{where}: two categories share a name ({', '.join(names)})")
    if not names:
        raise DataError(f"{where}: no categories in the COCO file(s)")
    return names


def _records(name, document, folder, split, images, names, problems, where):
    index: dict[int, tuple[int, dict]] = {}
    for i, image in enumerate(document.get("images", [])):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
            raise DataError(f"{where}/{name}: images[{i}]: needs a file_name")
        image_id = image.get("id")
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise DataError(
                f"{where}/{name}: images[{i}].id: expected a number, got {image_id!r:.40}"
            )
        if image_id in index:
            raise DataError(
                f"{where}/{name}: images[{i}].id {image_id!r} repeats "
                f"images[{index[image_id][0]}].id"
            )
        index[image_id] = (i, image)
    categories = {c["id"]: c["name"].strip() for c in document.get("categories", [])}
    boxes: dict = {image_id: ([], [], [0]) for image_id in index}
    for i, ann in enumerate(document.get("annotations", [])):
        _annotation(name, i, ann, index, categories, names, boxes, problems)
    for image_id, (i, image) in index.items():
        file = _find_image(image["file_name"], folder, images)
        if file is None:
            detail = f"{image['file_name']!r} is not in the source"
            problems.append(Problem(name, "missing_image", detail, f"images[{i}].file_name"))
            continue
        annotations, box_problems, crowd = boxes[image_id]
        labels = Labels(name, annotations, box_problems, crowd=crowd[0])
        yield Record(stem_of(file.name), file, lambda w, h, labels=labels: labels, split)


def _annotation(name, i, ann, index, categories, names, boxes, problems) -> None:
    place = f"annotations[{i}]"
    image_id = _key(ann.get("image_id")) if isinstance(ann, dict) else None
    if image_id not in index:
        shown = ann.get("image_id") if isinstance(ann, dict) else ann
        detail = f"image_id {shown!r:.40} is not in images"
        problems.append(Problem(name, "unknown_image", detail, f"{place}.image_id"))
        return
    annotations, box_problems, crowd = boxes[image_id]
    category = categories.get(_key(ann.get("category_id")))
    if category is None or category not in names:
        detail = f"category_id {ann.get('category_id')!r} is not in categories"
        box_problems.append(Problem(name, "unknown_class", detail, f"{place}.category_id"))
        return
    if ann.get("iscrowd"):
        crowd[0] += 1
        return
    bbox = ann.get("bbox")
    values = bbox if isinstance(bbox, list) and len(bbox) == 4 else None
    if values is None or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        box_problems.append(Problem(name, "malformed_box", f"bbox {bbox!r:.40}", f"{place}.bbox"))
        return
    x, y, w, h = (float(v) for v in values)
    if w < 0 or h < 0:
        detail = f"bbox {values!r:.40}: negative {'width' if w < 0 else 'height'}"
        box_problems.append(Problem(name, "malformed_box", detail, f"{place}.bbox"))
        return
    box = (round(x, 6), round(y, 6), round(x + w, 6), round(y + h, 6))
    annotations.append(Annotation(box, category, f"{place}.bbox"))


def _key(value):
    """An id as a dict key: numbers and text; anything else (lists, objects) matches nothing."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _image_index(files: dict[str, SourceFile]) -> dict:
    by_path = {n: f for n, f in files.items() if tree.is_image_name(n) and not tree.is_hidden(n)}
    by_base: dict[str, list[SourceFile]] = {}
    for n, f in by_path.items():
        by_base.setdefault(base_name(n), []).append(f)
    return {"path": by_path, "base": by_base}


def _find_image(file_name: str, folder: str, images: dict) -> SourceFile | None:
    """The listed file the JSON means: beside it, in images/, or a unique base name."""
    relative = file_name.replace("\\", "/").lstrip("/")
    prefix = f"{folder}/" if folder else ""
    parent = folder.rsplit("/", 1)[0] + "/" if "/" in folder else ""
    for candidate in (
        prefix + relative,
        prefix + "images/" + relative,
        parent + "images/" + relative,
        relative,
    ):
        if candidate in images["path"]:
            return images["path"][candidate]
    matches = images["base"].get(base_name(relative), [])
    near = [f for f in matches if f.name.startswith(prefix)] or matches
    return near[0] if len(near) == 1 else None
