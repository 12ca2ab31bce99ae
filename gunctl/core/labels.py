"""Read and check the Kaggle label format.

A label file ``Labels/<stem>.txt`` holds the box count on line 1, then one box per line
as ``x1 y1 x2 y2`` in pixels. The rules, written once (also in ``gunctl ingest --help``):

- Accepted as they are: CRLF line ends, a UTF-8 BOM, trailing spaces, blank lines,
  ``0`` boxes (a valid negative image), float coordinates (kept, not rounded).
- Repaired, reported, and an error under ``--strict``:
  a count that disagrees with the box lines (the box lines win); a line that is not
  four numbers (dropped); corners given as x2 < x1 or y2 < y1 (swapped); boxes partly
  outside the image, negative coordinates included (clipped); boxes wholly outside the
  image or of zero area (dropped).
- Skipped, reported: an empty or undecodable label file, one above ``MAX_LABEL_BYTES`` or
  with more than ``MAX_BOXES`` box lines (its image is left out).
- Another format: lines of five numbers (YOLO's ``class cx cy w h``) are reported as
  ``other_format``; when no box at all survives an ingest because of them, the ingest is
  refused (``refuse_other_format``) instead of producing a data set of empty images.
  A reader of another layout parses its own files and does not call these.
"""

from __future__ import annotations

from dataclasses import dataclass

from gunctl.errors import DataError

Box = tuple[float, float, float, float]
MAX_LABEL_BYTES = 1024 * 1024  # ~30,000 box lines; the data set's files are below 1 KiB
MAX_BOXES = 1000  # per image; the data set has at most 12 (COCO at most ~90)

# kind -> what gunctl did about it (shown in the ingest summary)
PROBLEM_KINDS: dict[str, str] = {
    "image_without_label": "image has no label file: image left out",
    "label_without_image": "label file has no image: label left out",
    "unreadable_image": "image cannot be decoded as JPEG or PNG (corrupt, truncated, empty "
    "or another format): left out",
    "extreme_aspect_ratio": "one side more than 20 times the other: left out",
    "exif_orientation": "EXIF orientation tag not applied: image and boxes used as stored",
    "unreadable_member": "zip member cannot be read (encrypted, unsupported compression, "
    "bad CRC): left out",
    "duplicate_member": "the archive holds this name more than once: the last copy is kept, "
    "as unzip does",
    "file_too_large": "file above the size limit: left out",
    "not_an_image": "file in Images/ is not a .jpeg/.jpg/.png image: left out",
    "image_too_large": "image above the pixel limit (decompression bomb?): left out",
    "format_mismatch": "image content does not match its extension: decoded by content",
    "duplicate_stem": "two images share a stem: the second is left out",
    "unsafe_path": "symlink or path that leads outside the source: left out",
    "empty_label": "label file is empty or not text: image left out",
    "too_many_boxes": f"label file has more than {MAX_BOXES} boxes: image left out",
    "other_format": "lines of five numbers (YOLO `class cx cy w h`?), not the Kaggle "
    "`x1 y1 x2 y2`: lines dropped",
    "malformed_line": "line is not a count or four numbers: line dropped",
    "count_mismatch": "count on line 1 disagrees with the box lines: box lines kept",
    "swapped_corners": "x2 < x1 or y2 < y1: corners swapped",
    "box_clipped": "box crosses the image border: clipped",
    "box_outside": "box lies wholly outside the image: dropped",
    "zero_area_box": "box has zero area: dropped",
    # YOLO, COCO and Pascal VOC sources (gunctl.core.formats)
    "missing_image": "annotation names an image file that is not in the source: left out",
    "unknown_image": "annotation refers to an image id that is not listed: dropped",
    "unknown_class": "class id or category is not among the names: box dropped",
    "not_normalised": "YOLO value outside 0..1 (pixels instead of fractions?): box dropped",
    "malformed_box": "box is missing, not numeric, or has a negative width or height: dropped",
    "malformed_xml": "annotation file is not well-formed XML: image left out",
}


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file (and line), and what was done about it."""

    file: str  # e.g. "Labels/12.txt"
    kind: str  # a key of PROBLEM_KINDS
    detail: str = ""
    line: int | str | None = None  # a line number, or a JSON path / XML element

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        text = PROBLEM_KINDS[self.kind]
        return f"{where}: {self.detail}; {text}" if self.detail else f"{where}: {text}"


@dataclass(frozen=True)
class ParsedLabel:
    boxes: list[tuple[Box, int]]  # each box with its 1-based line number
    problems: list[Problem]
    usable: bool  # False for empty or undecodable files


def parse_label(data: bytes, name: str, with_class: bool = False) -> ParsedLabel:
    """Parse a label file's bytes; never raises on bad content.

    ``with_class``: raw/ labels of a multi-class data set, whose box lines carry a fifth
    column, the class index (0-based, into the manifest's ``class_names``); see ``read_targets``.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return ParsedLabel([], [Problem(name, "empty_label", "not UTF-8 text")], usable=False)
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        return ParsedLabel([], [Problem(name, "empty_label")], usable=False)
    problems: list[Problem] = []
    (count_line, count_text), box_lines = lines[0], lines[1:]
    declared = _parse_count(count_text)
    if declared is None and (with_class or _numbers(count_text) != 5):
        problems.append(Problem(name, "malformed_line", f"count {count_text[:40]!r}", count_line))
    if len(box_lines) > MAX_BOXES:
        detail = f"{len(box_lines)} box lines"
        return ParsedLabel([], [Problem(name, "too_many_boxes", detail)], usable=False)
    five = [] if with_class else [n for n, line in lines if _numbers(line) == 5]
    if five:
        problems.append(Problem(name, "other_format", f"{len(five)} line(s)", five[0]))
    boxes: list[tuple[Box, int]] = []
    for number, line in box_lines:
        box = _parse_box(line, with_class)
        if box is None and number not in five:
            problems.append(Problem(name, "malformed_line", f"{line[:40]!r}", number))
        elif box is not None:
            boxes.append((box, number))
    if declared is not None and declared != len(box_lines):
        detail = f"says {declared}, found {len(box_lines)} box lines"
        problems.append(Problem(name, "count_mismatch", detail, count_line))
    return ParsedLabel(boxes, problems, usable=True)


def check_boxes(
    boxes: list[tuple[Box, int]], width: int, height: int, name: str
) -> tuple[list[Box], list[Problem]]:
    """Swap, clip or drop boxes so that each has positive area inside the image."""
    kept: list[Box] = []
    problems: list[Problem] = []
    for (x1, y1, x2, y2), line in boxes:
        if x2 < x1 or y2 < y1:
            problems.append(Problem(name, "swapped_corners", _fmt_box((x1, y1, x2, y2)), line))
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        if x1 == x2 or y1 == y2:
            problems.append(Problem(name, "zero_area_box", _fmt_box((x1, y1, x2, y2)), line))
            continue
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            detail = f"{_fmt_box((x1, y1, x2, y2))} in a {width}x{height} image"
            problems.append(Problem(name, "box_outside", detail, line))
            continue
        clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
        if clipped != (x1, y1, x2, y2):
            detail = f"{_fmt_box((x1, y1, x2, y2))} to {_fmt_box(clipped)}"
            problems.append(Problem(name, "box_clipped", detail, line))
        kept.append(clipped)
    return kept, problems


def format_label(boxes: list[Box], classes: list[int] | None = None) -> str:
    """The Kaggle format: the count, then one ``x1 y1 x2 y2`` line per box.

    With ``classes`` (multi-class data sets only), each box line ends with its class index.
    """
    rows = [" ".join(_fmt(v) for v in box) for box in boxes]
    if classes is not None:
        rows = [f"{row} {index}" for row, index in zip(rows, classes, strict=True)]
    return "\n".join([str(len(boxes)), *rows]) + "\n"


def read_boxes(data: bytes, width: int, height: int, name: str) -> list[Box]:
    """The usable boxes of a label file, repaired as ingest would (problems ignored)."""
    return read_targets(data, width, height, name)[0]


def read_targets(data: bytes, width: int, height: int, name: str) -> tuple[list[Box], list[int]]:
    """Boxes and class indices of a raw/ label file: ``x1 y1 x2 y2`` lines are class 0 (one
    class), ``x1 y1 x2 y2 k`` lines class k (multi-class); repaired as ingest would.
    A DataError for a file that ingest would have refused (the raw tree was edited)."""
    parsed = parse_label(data, name, with_class=True)
    if not parsed.usable:
        raise DataError(f"{name}: {parsed.problems[0].detail or parsed.problems[0].kind}")
    kept, classes = [], []
    for box, line in parsed.boxes:
        fixed = check_boxes([(box[:4], line)], width, height, name)[0]
        if fixed:
            kept.append(fixed[0])
            classes.append(int(box[4]) if len(box) == 5 else 0)
    return kept, classes


def refuse_other_format(problems: list[Problem], boxes: int, source: str) -> None:
    """Refuse an ingest where no box survived and label files looked like another format."""
    other = [p for p in problems if p.kind == "other_format"]
    if other and boxes == 0:
        raise DataError(
            f"{source}: no box survived; {len(other)} label file(s) hold five numbers per line "
            f"(first: {other[0].file}), likely YOLO `class cx cy w h`, not the Kaggle "
            "`count` + `x1 y1 x2 y2` format"
        )


def _parse_count(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _parse_box(text: str, with_class: bool = False) -> Box | None:
    parts = text.replace(",", " ").split()
    if with_class and len(parts) == 5 and parts[4].isascii() and parts[4].isdecimal():
        box = _parse_box(" ".join(parts[:4]))
        return None if box is None else (*box, float(parts[4]))  # type: ignore[return-value]
    if len(parts) != 4:
        return None
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        return None
    if not all(v == v and abs(v) != float("inf") for v in values):  # NaN / inf
        return None
    return values  # type: ignore[return-value]


def _numbers(text: str) -> int:
    """How many fields of ``text`` are numbers (0 when any field is not)."""
    parts = text.replace(",", " ").split()
    try:
        [float(p) for p in parts]
    except ValueError:
        return 0
    return len(parts)


def _fmt(value: float) -> str:
    """Exact: integers without a point, other floats as the shortest repr that reads back."""
    return str(int(value)) if value == int(value) else repr(value)


def _fmt_box(box: Box) -> str:
    return "(" + " ".join(_fmt(v) for v in box) + ")"
