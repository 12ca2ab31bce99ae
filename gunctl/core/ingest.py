"""Bring the data set into ``<out>/raw`` from Kaggle, a folder, a zip or the demo generator.

Every source layout (Kaggle, YOLO, COCO, Pascal VOC) is read by its reader in
``gunctl.core.formats`` into common records; every record goes through the same checks
(``labels``, ``images``), whatever its format. The checked tree is
staged in a temporary folder beside ``raw/`` and renamed into place, so ``raw/`` is
never half-written and an existing one survives a failed ingest.
"""

from __future__ import annotations

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
from gunctl.core.archive import MAX_MEMBER_BYTES, member_problem
from gunctl.core.fileio import read_document
from gunctl.core.formats import Record, Source, SourceFile
from gunctl.core.images import ImageProblem, decode_rgb, format_matches
from gunctl.core.labels import Problem, check_boxes, format_label
from gunctl.errors import DataError, SourceError, UsageError, cannot_write, first_line

MANIFEST_FORMAT = "gunctl-raw"
MANIFEST_SCHEMA = 1

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


def ingest(config: IngestConfig, progress: Progress | None = None) -> IngestReport:
    """Check the source, stage the raw tree, and move it into place. Returns the report."""
    layout = config.layout
    if layout.raw.exists() and not config.force:
        raise UsageError(f"{layout.raw} already exists; pass --force to replace it")
    created = not layout.root.exists()
    _make_dirs(layout.root)
    try:
        return _ingest(config, layout, progress)
    except BaseException:
        if created:  # a failed ingest leaves no empty --out behind
            shutil.rmtree(layout.root, ignore_errors=True)
        raise


def _ingest(config: IngestConfig, layout: Layout, progress) -> IngestReport:
    _remove_abandoned(layout.root)
    with tempfile.TemporaryDirectory(prefix=f".scratch-{os.getpid()}-", dir=layout.root) as scratch:
        label, version, files, problems, format_name = _open_source(config, Path(scratch))
        source = formats.read(format_name, {f.name: f for f in files}, label)
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
            _write_manifest(stage, report, config)
            _swap_into_place(stage, layout.raw)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    report.raw_dir = layout.raw
    return report


def read_manifest(layout: Layout) -> dict:
    """The manifest of the ingested tree; a DataError names the file when it is unusable."""
    return read_document(
        layout.manifest, MANIFEST_FORMAT, "manifest", "ingest a data set first (`gunctl ingest`)"
    )


# --- sources -------------------------------------------------------------------------------


def _open_source(config: IngestConfig, scratch: Path):
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
    if config.format != "auto" and config.format not in formats.FORMATS:
        raise UsageError(f"--format {config.format}: choose auto, {', '.join(formats.FORMATS)}")
    path = Path(config.source).expanduser()
    if path.is_dir() or (path.is_file() and zipfile.is_zipfile(path)):
        listing, problems = _list_folder(path) if path.is_dir() else _list_zip(path)
        chosen = config.format
        if chosen == "auto":
            chosen = formats.detect({f.name: f for f in listing}) or "kaggle"
        if chosen != "kaggle":
            return str(path), None, listing, problems, chosen
        if path.is_dir():
            files, problems = _folder_files(_require_root(path))
            return str(path), None, files, problems, "kaggle"
        return str(path), None, _zip_files(path), [], "kaggle"
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
            if entry.is_symlink() and not entry.resolve().is_relative_to(resolved_root):
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
            if entry.is_symlink() and not entry.resolve().is_relative_to(resolved_root):
                problems.append(
                    Problem(relative, "unsafe_path", f"symlink to {os.readlink(entry)}")
                )
            elif entry.is_file():
                files.append(SourceFile(relative, _reader(entry)))
    return files, problems


def _list_zip(path: Path) -> tuple[list[SourceFile], list[Problem]]:
    """Every file member of the zip, named relative to its one top folder when it has one."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path}: unreadable zip ({exc})") from None
    for member in members:
        _refuse_hostile(path, member)
    names = [m.filename for m in members if not m.is_dir()]
    tops = {name.split("/", 1)[0] for name in names}
    prefix = f"{tops.pop()}/" if len(tops) == 1 and all("/" in n for n in names) else ""
    files = [
        SourceFile(name[len(prefix) :], _zip_reader(path, name))
        for name in names
        if not name.endswith("/")
    ]
    return files, []


def _reader(path: Path) -> Callable[[], bytes]:
    return lambda: _read_bounded(path.open("rb"), path.name)


def _zip_files(path: Path) -> list[SourceFile]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path}: unreadable zip ({exc})") from None
    for member in members:
        _refuse_hostile(path, member)
    prefix = _zip_prefix(path, [m.filename for m in members])
    files = []
    for member in members:
        rest = member.filename[len(prefix) :]
        parts = rest.split("/")
        if member.is_dir() or len(parts) != 2 or not member.filename.startswith(prefix):
            continue
        folder = {"images": tree.IMAGES, "labels": tree.LABELS}.get(parts[0].lower())
        if folder:
            files.append(SourceFile(f"{folder}/{parts[1]}", _zip_reader(path, member.filename)))
    return files


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


def _zip_reader(path: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with zipfile.ZipFile(path) as archive:
            return _read_bounded(archive.open(member), member)

    return read


def _read_bounded(handle, name: str) -> bytes:
    with handle:
        data = handle.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise SourceError(f"{name}: larger than {MAX_MEMBER_BYTES // 2**20} MiB")
    return data


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
    data = image.read()
    try:
        _, meta = decode_rgb(data, config.max_pixels)
    except ImageProblem as problem:
        report.problems.append(Problem(image.name, problem.kind, problem.detail))
        return None
    extension = Path(image.name).suffix
    if not format_matches(extension, meta.format):
        report.problems.append(Problem(image.name, "format_mismatch", f"{meta.format} content"))
    labels = record.labels(meta.width, meta.height)
    report.problems.extend(labels.problems)
    if not labels.usable:
        return None
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
    multi = len(report.class_names) > 1
    image_name = Path(image.name).name
    label_bytes = format_label(boxes, classes if multi else None).encode()
    (stage / tree.IMAGES / image_name).write_bytes(data)
    (stage / tree.LABELS / f"{record.stem}.txt").write_bytes(label_bytes)
    _count(report, meta, len(boxes))
    for k in classes:
        report.boxes_per_class[report.class_names[k]] += 1
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
    if multi:  # boxes per class, for the stratified split (one-class entries stay as they were)
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


def data_checksum(entries: list[dict]) -> str:
    """The data's identity: a hash of the file list with its checksums (not of timestamps)."""
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


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


def _swap_into_place(stage: Path, raw: Path) -> None:
    """Rename the staged tree over ``raw``; the old tree is removed only once the new one is in."""
    old = raw.with_name(f".raw-old-{os.getpid()}")
    if raw.exists():
        os.replace(raw, old)
    try:
        os.replace(stage, raw)
    except OSError:
        if old.exists():
            os.replace(old, raw)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_abandoned(root: Path) -> None:
    """Staging folders of ingests that were killed (their process is gone) are removed."""
    for path in root.glob(".*-*"):
        found = re.match(r"^\.(?:scratch|raw-staging|raw-old)-(\d+)", path.name)
        if found and path.is_dir() and not _alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise cannot_write(path, exc) from None
