"""The Pascal VOC layout: ``Annotations/<stem>.xml`` beside ``JPEGImages/``; one ``<object>``
per box with ``<name>`` and ``<bndbox>`` (``xmin ymin xmax ymax`` in pixels). ``difficult``
objects are kept and counted. Classes are the object names found, in alphabetical order.

XML is parsed with defusedxml: a document that declares entities (a "billion laughs" bomb),
refers to external entities or has a DTD at all (``<!DOCTYPE ...>``, internal or external) is
refused, and the whole source with it; nothing is
fetched or read from disk on its behalf.
"""

from __future__ import annotations

import math

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
from gunctl.errors import DataError, SourceError

NAME = "voc"


def looks_like(files: dict[str, SourceFile]) -> bool:
    return any(_is_annotation(n) for n in files)


def read(files: dict[str, SourceFile], where: str) -> Source:
    found = [n for n in sorted(files) if _is_annotation(n)]
    if not found:
        raise DataError(f"{where}: no Annotations/*.xml (Pascal VOC layout)")
    parsed = [(n, _parse(files[n], where)) for n in found]
    names = sorted({a.class_name for _, labels in parsed for a in labels.annotations})
    source = Source(NAME, names or ["object"])
    images = _image_index(files)
    seen: dict[str, str] = {}
    records = []
    for name, labels in parsed:
        image = _find_image(name, labels, images)
        if image is None:
            source.items.append(Problem(name, "label_without_image", labels.file_hint))
            continue
        stem = stem_of(image.name)
        if stem in seen:
            source.items.append(Problem(image.name, "duplicate_stem", f"same stem as {seen[stem]}"))
            continue
        seen[stem] = image.name
        split = split_of(name.split("/")[:-1])
        result = labels.labels
        records.append(Record(stem, image, lambda w, h, result=result: result, split))
    source.items += sorted(records, key=lambda r: tree.natural_key(r.stem))
    return source


class _Parsed:
    def __init__(self, labels: Labels, filename: str | None):
        self.labels, self.filename = labels, filename
        self.file_hint = f"its image {filename!r} is not in JPEGImages/" if filename else ""

    @property
    def annotations(self):
        return self.labels.annotations


def _parse(file: SourceFile, where: str) -> _Parsed:
    from xml.etree.ElementTree import ParseError

    import defusedxml.ElementTree as ElementTree
    from defusedxml import DefusedXmlException

    try:
        root = ElementTree.fromstring(file.read(), forbid_dtd=True)  # any DOCTYPE, as said
    except DefusedXmlException as exc:
        raise SourceError(
            f"{where}/{file.name}: refused: {type(exc).__name__} (XML DTDs, entity "
            "declarations and external references are not accepted; nothing was read on their "
            "behalf)"
        ) from None
    except ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        problem = Problem(file.name, "malformed_xml", str(exc).split(":")[0], line)
        return _Parsed(Labels(file.name, [], [problem], usable=False), None)
    annotations, problems = [], []
    for i, obj in enumerate(root.findall("object"), start=1):
        place = f"object[{i}]"
        name = (obj.findtext("name") or "").strip()
        if not name:
            problems.append(Problem(file.name, "malformed_box", "no <name>", place))
            continue
        box = _box(obj.find("bndbox"))
        if box is None:
            problems.append(Problem(file.name, "malformed_box", "bndbox", f"{place}/bndbox"))
            continue
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        annotations.append(Annotation(box, name, f"{place}/bndbox", difficult))
    filename = (root.findtext("filename") or "").strip() or None
    return _Parsed(Labels(file.name, annotations, problems), filename)


def _box(element) -> tuple[float, float, float, float] | None:
    if element is None:
        return None
    try:
        values = tuple(float(element.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None  # type: ignore[return-value]


def _image_index(files: dict[str, SourceFile]) -> dict[str, dict[str, list[SourceFile]]]:
    """Images of the JPEGImages/ folder(s) (else all images) by base name and by stem."""
    images = [
        f for n, f in sorted(files.items()) if tree.is_image_name(n) and not tree.is_hidden(n)
    ]
    chosen = [f for f in images if _in_jpeg_images(f.name)] or images
    index: dict[str, dict[str, list[SourceFile]]] = {"base": {}, "stem": {}}
    for file in chosen:
        index["base"].setdefault(base_name(file.name), []).append(file)
        index["stem"].setdefault(stem_of(file.name), []).append(file)
    return index


def _find_image(xml_name: str, parsed: _Parsed, images: dict):
    """By <filename> in a JPEGImages/ folder, else an image with the XML's stem there."""
    if parsed.filename and images["base"].get(base_name(parsed.filename)):
        return images["base"][base_name(parsed.filename)][0]
    matches = images["stem"].get(stem_of(xml_name), [])
    return matches[0] if len(matches) == 1 else None


def _is_annotation(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) >= 2
        and parts[-2].lower() == "annotations"
        and name.lower().endswith(".xml")
        and not tree.is_hidden(name)
    )


def _in_jpeg_images(name: str) -> bool:
    return any(p.lower() == "jpegimages" for p in name.split("/")[:-1])
