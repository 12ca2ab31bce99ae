"""Bring the data set into ``<out>/raw`` from Kaggle, a folder, a zip or the demo generator.

Every source layout (Kaggle, YOLO, COCO, Pascal VOC) is read by its reader in
``gunctl.core.formats`` into common records; every record goes through the same checks
(``labels``, ``images``), whatever its format. The checked tree is
staged in a temporary folder beside ``raw/`` and renamed into place, so ``raw/`` is
never half-written and an existing one survives a failed ingest.

The checked tree is renamed into place under the exclusive ``raw/`` lock (``rawlock``): an
existing ``raw/`` survives a failed or killed ingest, and no reader sees it change. Zips are
read from one open archive (time linear in the members), every file with a bounded read
(memory bounded by the largest accepted file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gunctl.config import IngestConfig, Layout
from gunctl.core import formats, tree
from gunctl.core.archive import READ_ERRORS, describe, member_problem, unreadable
from gunctl.core.fileio import TooLarge, read_bounded
from gunctl.core.formats import Record, Source, SourceFile
from gunctl.core.images import ImageProblem, decode_rgb, format_matches
from gunctl.core.labels import (
    MAX_LABEL_BYTES,
    Problem,
    check_boxes,
    format_label,
    refuse_other_format,
)
from gunctl.core.manifest import MANIFEST_FORMAT, MANIFEST_SCHEMA, data_checksum, read_manifest
from gunctl.core.paths import name_problem
from gunctl.core.rawlock import RawLock, replaceable, swap_into_place
from gunctl.errors import DataError, SourceError, UsageError, cannot_write, first_line

__all__ = ["ingest", "read_manifest", "data_checksum", "IngestReport"]

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # no single image of this data set comes near it
MAX_ANNOTATION_BYTES = 256 * 1024 * 1024  # COCO JSON, VOC XML, YOLO YAML: whole-set files
MAX_ZIP_MEMBERS = 500_000  # the Kaggle archive holds ~6,000


class UnreadableFile(Exception):
    """A source file that cannot be read: too large, or an encrypted or corrupt zip member.
    ``kind`` is a labels.PROBLEM_KINDS key."""

    def __init__(self, name: str, kind: str, detail: str):
        super().__init__(f"{name}: {detail}")
        self.name, self.kind, self.detail = name, kind, detail


Progress = Callable[[int, int], None]


@dataclass
class IngestReport:
    source: str
    version: int | None
    raw_dir: Path
    images: int = 0
    boxes: int = 0
    empty_images: int = 0
    converted: int = 0  # grayscale, CMYK, palette or alpha images (decoded to RGB)
    smallest: tuple[int, int] | None = None  # (width, height) of the smallest image
    largest: tuple[int, int] | None = None
    problems: list[Problem] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list, repr=False)  # the manifest's file list
    source_format: str = "kaggle"
    class_names: list[str] = field(default_factory=lambda: ["gun"])
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    # Counted, not problems: left out by the user's --classes, COCO iscrowd boxes (left out),
    # Pascal VOC difficult objects (kept).
    classes_left_out: Counter = field(default_factory=Counter)
    crowd_left_out: int = 0
    difficult: int = 0

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def size_ranges(self) -> dict[str, list[int] | None]:
        """The range of image widths and of heights (the largest by area hides both)."""
        sized = [e for e in self.entries if "width" in e and "height" in e]
        return {
            key: [min(e[key] for e in sized), max(e[key] for e in sized)] if sized else None
            for key in ("width", "height")
        }

    def as_dict(self) -> dict:
        """The report as ``gunctl ingest --json`` prints it (JSON types only)."""
        return {
            "source": self.source,
            "format": self.source_format,
            "class_names": self.class_names,
            "boxes_per_class": self.boxes_per_class,
            "classes_left_out": dict(self.classes_left_out),
            "crowd_left_out": self.crowd_left_out,
            "difficult": self.difficult,
            "version": self.version,
            "raw_dir": str(self.raw_dir),
            "images": self.images,
            "boxes": self.boxes,
            "empty_images": self.empty_images,
            "converted": self.converted,
            "smallest": self.smallest,
            "largest": self.largest,
            **{f"{key}_range": span for key, span in self.size_ranges().items()},
            "problem_counts": self.problem_counts(),
            "problems": [str(p) for p in self.problems],
        }


def ingest(config: IngestConfig, progress: Progress | None = None) -> IngestReport:
    """Check the source, stage the raw tree, and move it into place. Returns the report."""
    config.check()
    layout = config.layout
    created = not layout.root.exists()
    _make_dirs(layout.root)
    try:
        return _ingest(config, layout, progress)
    except BaseException:
        if created:  # a failed ingest leaves no empty --out behind
            shutil.rmtree(layout.root, ignore_errors=True)
        raise


def _ingest(config: IngestConfig, layout: Layout, progress) -> IngestReport:
    with RawLock(layout, exclusive=True, command="gunctl ingest"), contextlib.ExitStack() as stack:
        _check_target(layout.raw, config.force)
        _remove_abandoned(layout.root)
        scratch = stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f".scratch-{os.getpid()}-", dir=layout.root)
        )
        label, version, files, problems, format_name = _open_source(config, Path(scratch), stack)
        try:
            source = formats.read(format_name, {f.name: f for f in files}, label)
        except UnreadableFile as exc:
            raise DataError(f"{label}: {exc}") from None
        stage = Path(tempfile.mkdtemp(prefix=f".raw-staging-{os.getpid()}-", dir=layout.root))
        try:
            report = _build_tree(config, source, stage, progress)
            report.source, report.version = label, version
            report.problems[:0] = problems
            if config.strict and report.problems:
                raise DataError(
                    f"{label}: {len(report.problems)} problem(s) under --strict, "
                    f"first: {report.problems[0]}"
                )
            if report.images == 0:
                raise DataError(f"{label}: no usable image with a label file was found")
            refuse_other_format(report.problems, report.boxes, label)
            _write_manifest(stage, report, config)
            swap_into_place(stage, layout.raw)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    report.raw_dir = layout.raw
    return report


def _check_target(raw: Path, force: bool) -> None:
    if (raw.exists() or raw.is_symlink()) and not force:
        raise UsageError(f"{raw} already exists; pass --force to replace it")
    if not replaceable(raw):
        raise UsageError(
            f"{raw}: not a gunctl data tree (no manifest.json); --force replaces only what "
            "gunctl ingest wrote: move it away or pick another --out"
        )


# --- sources -------------------------------------------------------------------------------


def _open_source(config: IngestConfig, scratch: Path, stack: contextlib.ExitStack):
    """(label for reports, version, files, problems found while listing, format)."""
    if config.source in ("demo", "kaggle") and config.format not in ("auto", "kaggle"):
        raise UsageError(f"--format {config.format} applies to a local folder or .zip only")
    if config.source == "demo":
        from gunctl.core import demo

        demo.generate(scratch / "demo", count=config.count, seed=config.seed)
        files, problems = _folder_files(scratch / "demo")
        label = f"demo (seed {config.seed}, {config.count} images)"
        return label, None, files, problems, "kaggle"
    if config.source == "kaggle":
        path, version = _kaggle_download(config.handle, config.version)
        files, problems = _folder_files(_require_root(path))
        return f"kaggle:{config.handle}", version, files, problems, "kaggle"
    if config.version is not None:
        raise UsageError("--version applies to --source kaggle only")
    path = Path(config.source).expanduser()
    if path.is_dir() or (path.is_file() and zipfile.is_zipfile(path)):
        listing, problems = _list_folder(path) if path.is_dir() else _list_zip(path, stack)
        chosen = config.format
        if chosen == "auto":
            chosen = formats.detect({f.name: f for f in listing}) or "kaggle"
        if chosen != "kaggle":
            return str(path), None, listing, problems, chosen
        if path.is_dir():
            files, problems = _folder_files(_require_root(path))
            return str(path), None, files, problems, "kaggle"
        files, problems = _zip_files(path, stack)
        return str(path), None, files, problems, "kaggle"
    if path.exists():
        raise SourceError(f"{path}: not a folder or a .zip archive")
    raise SourceError(
        f"{config.source}: no such folder or .zip (sources: kaggle, demo, or a local path)"
    )


def _kaggle_download(handle: str, version: int | None) -> tuple[Path, int | None]:
    import kagglehub

    full = f"{handle}/versions/{version}" if version is not None else handle
    try:
        path = Path(kagglehub.dataset_download(full))
    except Exception as exc:  # kagglehub raises requests, HTTP and its own errors
        reason = first_line(exc, 120)  # cut at a word boundary
        raise SourceError(
            f"Kaggle download of {full} failed ({type(exc).__name__}: {reason}); "
            "offline, `--source PATH` ingests a local folder or .zip"
        ) from None
    found = re.search(r"versions/(\d+)$", path.as_posix())
    return path, int(found.group(1)) if found else version


def _require_root(path: Path) -> Path:
    root = tree.find_root(path)
    if root is None:
        raise DataError(
            f"{path}: no Images/ and Labels/ folders (the Kaggle layout), and no YOLO, COCO "
            "or Pascal VOC layout either (--format names one)"
        )
    return root


def _folder_files(root: Path) -> tuple[list[SourceFile], list[Problem]]:
    files: list[SourceFile] = []
    problems: list[Problem] = []
    resolved_root = root.resolve()
    for folder in (tree.IMAGES, tree.LABELS):
        for entry in sorted(tree.child_dir(root, folder).iterdir()):
            name = f"{folder}/{entry.name}"
            if entry.is_symlink() and not _inside(entry, resolved_root):
                problems.append(Problem(name, "unsafe_path", f"symlink to {os.readlink(entry)}"))
            elif entry.is_file():
                files.append(SourceFile(name, _reader(entry)))
    return files, problems


def _list_folder(path: Path) -> tuple[list[SourceFile], list[Problem]]:
    """Every file under ``path`` (or under its only sub-folder), named relative to it.

    Symbolic links that lead outside are left out and reported; hidden folders are skipped.
    """
    root = path
    entries = [p for p in root.iterdir() if not tree.is_hidden(p.name)]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        root = entries[0]
    resolved_root = root.resolve()
    files: list[SourceFile] = []
    problems: list[Problem] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not tree.is_hidden(d))
        for name in sorted(names):
            entry = Path(folder) / name
            relative = entry.relative_to(root).as_posix()
            if entry.is_symlink() and not _inside(entry, resolved_root):
                problems.append(
                    Problem(relative, "unsafe_path", f"symlink to {os.readlink(entry)}")
                )
            elif entry.is_file():
                files.append(SourceFile(relative, _reader(entry)))
    return files, problems


def _list_zip(path: Path, stack) -> tuple[list[SourceFile], list[Problem]]:
    """Every file member of the zip, named relative to its one top folder when it has one."""
    archive, by_name, problems = _open_zip(path, stack)
    names = [name for name, member in by_name.items() if not member.is_dir()]
    tops = {name.split("/", 1)[0] for name in names}
    prefix = f"{tops.pop()}/" if len(tops) == 1 and all("/" in n for n in names) else ""
    files = [
        SourceFile(name[len(prefix) :], _zip_reader(archive, by_name[name]))
        for name in names
        if not name.endswith("/")
    ]
    return files, problems


def _inside(entry: Path, root: Path) -> bool:
    try:
        return entry.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _limit(name: str) -> int:
    """The most bytes read of a source file: label text files are small, images less so."""
    lower = name.lower()
    if lower.endswith(".txt"):
        return MAX_LABEL_BYTES
    return MAX_IMAGE_BYTES if tree.is_image_name(lower) else MAX_ANNOTATION_BYTES


def _reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return read_bounded(path.open("rb"), _limit(path.name))
        except TooLarge as exc:
            raise UnreadableFile(path.name, "file_too_large", str(exc)) from None

    return read


def _open_zip(path: Path, stack: contextlib.ExitStack):
    """The open archive (closed by ``stack``), its members by name (indexed once), and the
    names it holds more than once: the last copy is kept, as ``unzip`` and
    ``ZipFile.open(name)`` do."""
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise SourceError(f"{path}: unreadable zip ({exc})") from None
    if len(members) > MAX_ZIP_MEMBERS:
        raise SourceError(f"{path}: {len(members):,} members, more than {MAX_ZIP_MEMBERS:,}")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for member in members:
        _refuse_hostile(path, member)
        by_name[member.filename] = member  # the last copy of a repeated name wins
    seen = Counter(m.filename for m in members)
    problems = [
        Problem(name, "duplicate_member", f"{count} copies")
        for name, count in seen.items()
        if count > 1 and not name.endswith("/")
    ]
    return archive, by_name, problems


def _zip_files(path: Path, stack) -> tuple[list[SourceFile], list[Problem]]:
    archive, by_name, problems = _open_zip(path, stack)
    prefix = _zip_prefix(path, list(by_name))
    files = []
    for name, member in by_name.items():
        parts = name[len(prefix) :].split("/")
        if member.is_dir() or len(parts) != 2 or not name.startswith(prefix):
            continue
        folder = {"images": tree.IMAGES, "labels": tree.LABELS}.get(parts[0].lower())
        if folder:
            files.append(SourceFile(f"{folder}/{parts[1]}", _zip_reader(archive, member)))
    problems = [
        Problem(
            f"{tree.IMAGES if '/images/' in '/' + p.file.lower() else tree.LABELS}/"
            f"{p.file.rsplit('/', 1)[-1]}",
            p.kind,
            p.detail,
        )
        for p in problems
    ]
    return files, problems


def _refuse_hostile(path: Path, member: zipfile.ZipInfo) -> None:
    reason = member_problem(member)
    if reason:
        raise SourceError(f"{path}: refused member {member.filename!r}: {reason}")


def _zip_prefix(path: Path, names: list[str]) -> str:
    """'' when Images/ and Labels/ are at the top, 'folder/' when one folder holds them."""
    found: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) in (2, 3) and parts[-2].lower() in ("images", "labels") and parts[-1]:
            prefix = "/".join(parts[:-2])
            found.setdefault(prefix + "/" if prefix else "", set()).add(parts[-2].lower())
    complete = [p for p, folders in found.items() if folders == {"images", "labels"}]
    if len(complete) != 1:
        raise DataError(
            f"{path}: no single Images/ and Labels/ pair in the archive (Kaggle layout)"
        )
    return complete[0]


def _zip_reader(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        name = member.filename
        reason = unreadable(member)  # encrypted, deflate64...: the one rule (core.archive)
        if reason:
            raise UnreadableFile(name, "unreadable_member", reason)
        try:
            return read_bounded(archive.open(member), _limit(name))
        except TooLarge as exc:
            raise UnreadableFile(name, "file_too_large", str(exc)) from None
        except READ_ERRORS as exc:
            raise UnreadableFile(name, "unreadable_member", describe(exc)) from None

    return read


# --- checking and staging ------------------------------------------------------------------


def _build_tree(config, source: Source, stage: Path, progress) -> IngestReport:
    report = IngestReport(source="", version=None, raw_dir=stage, source_format=source.format)
    names, index = _resolve_classes(config, source.class_names)
    report.class_names = names
    report.boxes_per_class = dict.fromkeys(names, 0)
    (stage / tree.IMAGES).mkdir()
    (stage / tree.LABELS).mkdir()
    entries = []
    total = len(source.items)
    for done, item in enumerate(source.items, start=1):
        if isinstance(item, Record):
            entry = _ingest_record(item, stage, config, report, index)
            if entry is not None:
                entries.append(entry)
        else:
            report.problems.append(item)
        if progress:
            progress(done, total)
    report.entries = entries
    return report


def _resolve_classes(config, source_names: list[str]) -> tuple[list[str], dict[str, int]]:
    """The output class names, and each kept source class's index among them.

    ``--classes`` keeps and orders a subset; ``--merge-classes NAME`` maps the (kept) classes
    to one; a one-class source keeps its one class, as ingest always did.
    """
    kept = list(source_names)
    if config.classes:
        unknown = [c for c in config.classes if c not in source_names]
        if unknown:
            raise UsageError(
                f"--classes: {', '.join(unknown)} not in the source's classes "
                f"({', '.join(source_names)})"
            )
        kept = list(dict.fromkeys(config.classes))
    if config.merge_classes:
        return [config.merge_classes], dict.fromkeys(kept, 0)
    return kept, {name: i for i, name in enumerate(kept)}


def _ingest_record(record: Record, stage: Path, config, report: IngestReport, index) -> dict | None:
    image = record.image
    unsafe = name_problem(Path(image.name).name) or name_problem(f"{record.stem}.txt")
    if unsafe:
        report.problems.append(Problem(image.name, "unsafe_path", unsafe))
        return None
    try:
        data = image.read()
    except UnreadableFile as exc:
        report.problems.append(Problem(image.name, exc.kind, exc.detail))
        return None
    try:
        _, meta = decode_rgb(data, config.max_pixels)
    except ImageProblem as problem:
        report.problems.append(Problem(image.name, problem.kind, problem.detail))
        return None
    extension = Path(image.name).suffix
    if not format_matches(extension, meta.format):
        report.problems.append(Problem(image.name, "format_mismatch", f"{meta.format} content"))
    if meta.orientation != 1:
        detail = f"orientation {meta.orientation}"
        report.problems.append(Problem(image.name, "exif_orientation", detail))
    try:
        labels = record.labels(meta.width, meta.height)
    except UnreadableFile as exc:
        report.problems.append(Problem(_label_name(record, exc), exc.kind, exc.detail))
        return None
    report.problems.extend(labels.problems)
    if not labels.usable:
        return None
    boxes, classes = _kept_boxes(labels, meta, report, index)
    multi = len(report.class_names) > 1
    image_name = Path(image.name).name
    label_bytes = format_label(boxes, classes if multi else None).encode()
    (stage / tree.IMAGES / image_name).write_bytes(data)
    (stage / tree.LABELS / f"{record.stem}.txt").write_bytes(label_bytes)
    _count(report, meta, len(boxes))
    for k in classes:
        report.boxes_per_class[report.class_names[k]] += 1
    return _manifest_entry(record, image_name, meta, (data, label_bytes), (boxes, classes), report)


def _kept_boxes(labels, meta, report: IngestReport, index) -> tuple[list, list[int]]:
    """The boxes of the kept classes that pass the box checks, and their class indices; what
    is left out is counted in ``report`` (classes, crowd boxes) or reported (box problems)."""
    boxes, classes = [], []
    for annotation in labels.annotations:
        if annotation.class_name not in index:
            report.classes_left_out[annotation.class_name] += 1
            continue
        kept, box_problems = check_boxes(
            [(annotation.box, annotation.place)], meta.width, meta.height, labels.file
        )
        report.problems.extend(box_problems)
        if kept:
            boxes += kept
            classes.append(index[annotation.class_name])
            report.difficult += annotation.difficult
    report.crowd_left_out += labels.crowd
    return boxes, classes


def _manifest_entry(record, image_name: str, meta, files, kept, report) -> dict:
    """The manifest's line for one staged pair (``files``: the image's and the label's bytes;
    ``kept``: the boxes and their class indices)."""
    (data, label_bytes), (boxes, classes) = files, kept
    entry = {
        "stem": record.stem,
        "image": image_name,
        "label": f"{record.stem}.txt",
        "width": meta.width,
        "height": meta.height,
        "boxes": len(boxes),
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "label_sha256": hashlib.sha256(label_bytes).hexdigest(),
    }
    if len(report.class_names) > 1:  # boxes per class, for the stratified split
        entry["classes"] = [classes.count(k) for k in range(len(report.class_names))]
    if record.split is not None:
        entry["source_split"] = record.split
    return entry


def _count(report: IngestReport, meta, boxes: int) -> None:
    report.images += 1
    report.boxes += boxes
    report.empty_images += boxes == 0
    report.converted += meta.mode != "RGB"
    size = (meta.width, meta.height)
    if report.smallest is None or size[0] * size[1] < report.smallest[0] * report.smallest[1]:
        report.smallest = size
    if report.largest is None or size[0] * size[1] > report.largest[0] * report.largest[1]:
        report.largest = size


def _label_name(record: Record, exc: UnreadableFile) -> str:
    """The label file's name as the listing gives it (``Labels/2.txt``), for the report."""
    name = exc.name.rsplit("/", 1)[-1]
    return f"{tree.LABELS}/{name}" if name == f"{record.stem}.txt" else exc.name


def _write_manifest(stage: Path, report: IngestReport, config: IngestConfig) -> None:
    from gunctl import __version__

    entries = report.entries
    manifest = {
        "format": MANIFEST_FORMAT,
        "schema": MANIFEST_SCHEMA,
        "gunctl": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": report.source,
        "version": report.version,
        "strict": config.strict,
        "source_format": report.source_format,
        "class_names": report.class_names,  # label k in raw/ lines (5th column) is class_names[k]
        "counts": {
            "images": report.images,
            "boxes": report.boxes,
            "empty_images": report.empty_images,
            "problems": report.problem_counts(),
            "boxes_per_class": report.boxes_per_class,
            "classes_left_out": dict(report.classes_left_out),
            "crowd_left_out": report.crowd_left_out,
            "difficult": report.difficult,
        },
        "checksum": data_checksum(entries),
        "files": entries,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _remove_abandoned(root: Path) -> None:
    """Staging folders of killed ingests (we hold the exclusive lock: none is in use)."""
    for path in root.glob(".*-*"):
        if re.match(r"^\.(?:scratch|raw-staging)-\d+", path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise cannot_write(path, exc) from None
