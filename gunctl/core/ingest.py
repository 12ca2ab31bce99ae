"""Bring the data set into ``<out>/raw`` from Kaggle, a folder, a zip or the demo generator.

Every source goes through the same checks (``labels``, ``images``); the checked tree is
staged in a temporary folder beside ``raw/`` and renamed into place under the exclusive
``raw/`` lock (``rawlock``), so ``raw/`` is never half-written, an existing one survives a
failed or killed ingest, and no reader sees it change.

Zips are read in one pass over one open archive (linear in the number of members), one
member at a time with a bounded read (memory bounded by the largest accepted file).
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
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gunctl.config import IngestConfig
from gunctl.core import tree
from gunctl.core.fileio import TooLarge, read_bounded
from gunctl.core.images import ImageProblem, decode_rgb, format_matches
from gunctl.core.labels import (
    MAX_LABEL_BYTES,
    Problem,
    check_boxes,
    format_label,
    parse_label,
    refuse_other_format,
)
from gunctl.core.manifest import MANIFEST_FORMAT, MANIFEST_SCHEMA, data_checksum, read_manifest
from gunctl.core.paths import name_problem
from gunctl.core.rawlock import RawLock, replaceable, swap_into_place
from gunctl.errors import DataError, SourceError, UsageError, cannot_write, first_line

__all__ = ["ingest", "read_manifest", "data_checksum", "IngestReport", "SourceFile"]
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # no single image of this data set comes near it
MAX_ZIP_MEMBERS = 500_000  # the Kaggle archive holds ~6,000
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,  # bad CRC, bad local header
    RuntimeError,  # encrypted ("password required")
    NotImplementedError,  # deflate64, implode and other compression methods
    zlib.error,
    EOFError,
    OSError,
    ValueError,
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SourceFile:
    name: str  # "Images/1.jpeg" or "Labels/1.txt", relative to the layout's root
    read: Callable[[int], bytes]  # read(limit): the bytes; TooLarge or ReadFailed otherwise


class ReadFailed(Exception):
    """A source file that cannot be read (an encrypted or corrupt zip member)."""


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

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))


def ingest(config: IngestConfig, progress: Progress | None = None) -> IngestReport:
    """Check the source, stage the raw tree, and move it into place. Returns the report."""
    layout = config.layout
    _make_dirs(layout.root)
    with RawLock(layout, exclusive=True, command="gunctl ingest"), contextlib.ExitStack() as stack:
        _check_target(layout.raw, config.force)
        _remove_abandoned(layout.root)
        scratch = stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f".scratch-{os.getpid()}-", dir=layout.root)
        )
        label, version, files, problems = _open_source(config, Path(scratch), stack)
        stage = Path(tempfile.mkdtemp(prefix=f".raw-staging-{os.getpid()}-", dir=layout.root))
        try:
            report = _build_tree(config, files, stage, progress)
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
    """(label for reports, version, files, problems found while listing)."""
    if config.source == "demo":
        from gunctl.core import demo

        demo.generate(scratch / "demo", count=config.count, seed=config.seed)
        files, problems = _folder_files(scratch / "demo")
        return f"demo (seed {config.seed}, {config.count} images)", None, files, problems
    if config.source == "kaggle":
        path, version = _kaggle_download(config.handle, config.version)
        files, problems = _folder_files(_require_root(path))
        return f"kaggle:{config.handle}", version, files, problems
    if config.version is not None:
        raise UsageError("--version applies to --source kaggle only")
    path = Path(config.source).expanduser()
    if path.is_dir():
        files, problems = _folder_files(_require_root(path))
        return str(path), None, files, problems
    if path.is_file() and zipfile.is_zipfile(path):
        files, problems = _zip_files(path, stack)
        return str(path), None, files, problems
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
        reason = first_line(exc, 160)
        raise SourceError(
            f"Kaggle download of {full} failed ({type(exc).__name__}: {reason}); "
            "offline, `--source PATH` ingests a local folder or .zip"
        ) from None
    found = re.search(r"versions/(\d+)$", path.as_posix())
    return path, int(found.group(1)) if found else version


def _require_root(path: Path) -> Path:
    root = tree.find_root(path)
    if root is None:
        raise DataError(f"{path}: no Images/ and Labels/ folders (the Kaggle layout)")
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


def _inside(entry: Path, root: Path) -> bool:
    try:
        return entry.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _reader(path: Path) -> Callable[[int], bytes]:
    return lambda limit: read_bounded(path.open("rb"), limit)


def _zip_files(path: Path, stack: contextlib.ExitStack) -> tuple[list[SourceFile], list[Problem]]:
    """The archive's files, read later from the one open archive (closed by ``stack``).

    A name held twice: the last copy is kept (as ``unzip`` and ``ZipFile.open(name)`` do).
    """
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
    prefix = _zip_prefix(path, list(by_name))
    files, problems, seen = [], [], Counter(m.filename for m in members)
    for name, member in by_name.items():
        parts = name[len(prefix) :].split("/")
        if member.is_dir() or len(parts) != 2 or not name.startswith(prefix):
            continue
        folder = {"images": tree.IMAGES, "labels": tree.LABELS}.get(parts[0].lower())
        if folder:
            files.append(SourceFile(f"{folder}/{parts[1]}", _zip_reader(archive, member)))
            if seen[name] > 1:
                problems.append(
                    Problem(f"{folder}/{parts[1]}", "duplicate_member", f"{seen[name]} copies")
                )
    return files, problems


def _refuse_hostile(path: Path, member: zipfile.ZipInfo) -> None:
    name = member.filename
    is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
    if (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name)
        or ".." in re.split(r"[/\\]", name)
    ):
        raise SourceError(f"{path}: refused member {name!r}: its path leads outside the archive")
    if is_link:
        raise SourceError(f"{path}: refused member {name!r}: symbolic links are not accepted")


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


def _zip_reader(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> Callable[[int], bytes]:
    def read(limit: int) -> bytes:
        if member.flag_bits & 0x1:
            raise ReadFailed("encrypted")
        try:
            return read_bounded(archive.open(member), limit)
        except TooLarge:
            raise
        except _ZIP_READ_ERRORS as exc:
            raise ReadFailed(str(exc).splitlines()[0][:120] or type(exc).__name__) from None

    return read


# --- checking and staging ------------------------------------------------------------------


def _build_tree(config, files: list[SourceFile], stage: Path, progress) -> IngestReport:
    report = IngestReport(source="", version=None, raw_dir=stage)
    images, labels = _index_files(files, report.problems)
    stems = sorted(set(images) | set(labels), key=tree.natural_key)
    (stage / tree.IMAGES).mkdir()
    (stage / tree.LABELS).mkdir()
    entries = []
    for done, stem in enumerate(stems, start=1):
        entry = _ingest_pair(stem, images.get(stem), labels.get(stem), stage, config, report)
        if entry is not None:
            entries.append(entry)
        if progress:
            progress(done, len(stems))
    report.entries = entries
    return report


def _index_files(files: list[SourceFile], problems: list[Problem]):
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
        unsafe = name_problem(file.name.rsplit("/", 1)[-1])
        if unsafe:
            problems.append(Problem(file.name, "unsafe_path", unsafe))
            continue
        target = images if is_image_folder else labels
        stem = tree.stem_of(file.name)
        if stem in target:
            problems.append(
                Problem(file.name, "duplicate_stem", f"same stem as {target[stem].name}")
            )
            continue
        target[stem] = file
    return images, labels


def _ingest_pair(stem, image: SourceFile | None, label: SourceFile | None, stage, config, report):
    if label is None:
        report.problems.append(Problem(image.name, "image_without_label"))
        return None
    if image is None:
        report.problems.append(Problem(label.name, "label_without_image"))
        return None
    data = _read(image, MAX_IMAGE_BYTES, report)
    label_data = _read(label, MAX_LABEL_BYTES, report) if data is not None else None
    if data is None or label_data is None:
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
    parsed = parse_label(label_data, label.name)
    report.problems.extend(parsed.problems)
    if not parsed.usable:
        return None
    boxes, box_problems = check_boxes(parsed.boxes, meta.width, meta.height, label.name)
    report.problems.extend(box_problems)
    image_name = Path(image.name).name
    label_bytes = format_label(boxes).encode()
    (stage / tree.IMAGES / image_name).write_bytes(data)
    (stage / tree.LABELS / f"{stem}.txt").write_bytes(label_bytes)
    _count(report, meta, len(boxes))
    return {
        "stem": stem,
        "image": image_name,
        "label": f"{stem}.txt",
        "width": meta.width,
        "height": meta.height,
        "boxes": len(boxes),
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "label_sha256": hashlib.sha256(label_bytes).hexdigest(),
    }


def _read(file: SourceFile, limit: int, report: IngestReport) -> bytes | None:
    """The file's bytes, or None with a problem reported (too large, unreadable member)."""
    try:
        return file.read(limit)
    except TooLarge as exc:
        report.problems.append(Problem(file.name, "file_too_large", str(exc)))
    except ReadFailed as exc:
        report.problems.append(Problem(file.name, "unreadable_member", str(exc)))
    return None


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
        "counts": {
            "images": report.images,
            "boxes": report.boxes,
            "empty_images": report.empty_images,
            "problems": report.problem_counts(),
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
