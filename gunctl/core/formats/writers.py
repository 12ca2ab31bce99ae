"""Write the ingested, checked data set (``raw/``) out as YOLO or COCO: `gunctl export-data`.

Everything is written under the chosen folder and nowhere else: file names come from the
manifest and must be plain names (no folders, no ``..``); the files are staged in a hidden
folder inside it and moved into place at the end, so a failure leaves no half-written set
(only the hidden folder, removed on the way out; a folder the export made is removed too).
A non-empty folder is refused unless ``force`` (then files of the same name are replaced;
nothing else there is touched); a sub-folder there that is a symlink is refused, never
written through. One export at a time writes into a folder (a lock on it; a second one fails
at once with exit code 2).

- YOLO: ``images/<image>``, ``labels/<stem>.txt`` (``class cx cy w h``, normalised),
  ``data.yaml`` (``names`` by id; ``train`` and ``val`` both name ``images``).
- COCO: ``images/<image>`` and ``annotations/instances.json`` (``bbox`` as
  ``[x, y, width, height]`` in pixels, category ids from 1 in class order).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gunctl.config import Layout
from gunctl.core import tree
from gunctl.core.fileio import make_dirs, make_dirs_under, remove_created
from gunctl.core.labels import read_targets
from gunctl.core.manifest import class_names_of, read_manifest
from gunctl.errors import DataError, OutputError, RunLockedError, UsageError

EXPORT_FORMATS = ("yolo", "coco")


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    format: str
    images: int
    boxes: int
    class_names: list[str]


def export_data(layout: Layout, folder: Path, format_name: str, force: bool) -> ExportResult:
    if format_name not in EXPORT_FORMATS:
        raise UsageError(f"--format {format_name}: choose one of {', '.join(EXPORT_FORMATS)}")
    manifest = read_manifest(layout)
    names = class_names_of(manifest)
    folder = Path(folder)
    made = _check_target(folder, layout)
    try:
        with _only_writer(folder):
            if not force and any(folder.iterdir()):
                raise UsageError(f"{folder}: not empty; pass --force to write into it anyway")
            items = [_item(layout, entry, len(names)) for entry in manifest.get("files", [])]
            stage = Path(tempfile.mkdtemp(prefix=".gunctl-export-", dir=folder))
            try:
                (_write_yolo if format_name == "yolo" else _write_coco)(stage, items, names)
                _move_into(stage, folder)
            except OSError as exc:
                raise OutputError(f"{folder}: cannot write ({exc.strerror or exc})") from None
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        remove_created(made)  # a failed export leaves no empty folder behind
        raise
    boxes = sum(len(item["boxes"]) for item in items)
    return ExportResult(folder, format_name, len(items), boxes, names)


def _check_target(folder: Path, layout: Layout) -> list[Path]:
    """Refuse a target that is not a folder or lies in raw/; make it. Returns the folders made
    (removed again when the export fails)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder")
    resolved = folder.resolve()
    if resolved == layout.raw.resolve() or resolved.is_relative_to(layout.raw.resolve()):
        raise UsageError(f"{folder}: inside {layout.raw}; export the data set somewhere else")
    try:
        return make_dirs(folder)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _only_writer(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself (nothing is left in it; the kernel releases it
    when the process ends, even by kill -9): a second export into the same folder is refused
    instead of mixing its files with the first's. Its emptiness is checked under the lock."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{folder}: another gunctl export-data is writing here; wait for it"
            ) from None
        yield
    finally:
        os.close(fd)


def _item(layout: Layout, entry: dict, classes: int) -> dict:
    image, label = entry.get("image"), entry.get("label")
    for name in (image, label):
        if not _plain_name(name):
            raise DataError(f"{layout.manifest}: file name {name!r} is not a plain file name")
    width, height = int(entry["width"]), int(entry["height"])
    label_path = layout.raw / tree.LABELS / label
    boxes, indices = read_targets(label_path.read_bytes(), width, height, str(label_path))
    if any(k >= classes for k in indices):
        raise DataError(f"{label_path}: a class index beyond the manifest's class_names")
    stem = tree.stem_of(label)
    return {"image": image, "stem": stem, "path": layout.raw / tree.IMAGES / image,
            "sha256": entry.get("image_sha256"), "width": width, "height": height,
            "boxes": boxes, "classes": indices}  # fmt: skip


def _copy_image(item: dict, folder: Path) -> None:
    """Copy one image (read one at a time: the set may not fit in memory), checking that it
    is the file ingest checked."""
    data = item["path"].read_bytes()
    if hashlib.sha256(data).hexdigest() != item["sha256"]:
        raise DataError(f"{item['path']}: changed since ingest (its checksum differs)")
    (folder / item["image"]).write_bytes(data)


def _plain_name(name) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(".")
    )


def _write_yolo(stage: Path, items: list[dict], names: list[str]) -> None:
    import yaml

    (stage / "images").mkdir()
    (stage / "labels").mkdir()
    for item in items:
        _copy_image(item, stage / "images")
        w, h = item["width"], item["height"]
        lines = [
            f"{k} {(x1 + x2) / 2 / w:.8f} {(y1 + y2) / 2 / h:.8f} "
            f"{(x2 - x1) / w:.8f} {(y2 - y1) / h:.8f}\n"
            for (x1, y1, x2, y2), k in zip(item["boxes"], item["classes"], strict=True)
        ]
        (stage / "labels" / f"{item['stem']}.txt").write_text("".join(lines), encoding="utf-8")
    data = {"path": ".", "train": "images", "val": "images", "names": dict(enumerate(names))}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    (stage / "data.yaml").write_text(text, encoding="utf-8")


def _write_coco(stage: Path, items: list[dict], names: list[str]) -> None:
    (stage / "images").mkdir()
    (stage / "annotations").mkdir()
    images, annotations = [], []
    for image_id, item in enumerate(items, start=1):
        _copy_image(item, stage / "images")
        images.append(
            {"id": image_id, "file_name": item["image"], "width": item["width"],
             "height": item["height"]}
        )  # fmt: skip
        for (x1, y1, x2, y2), k in zip(item["boxes"], item["classes"], strict=True):
            w, h = round(x2 - x1, 6), round(y2 - y1, 6)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": k + 1,
                 "bbox": [x1, y1, w, h], "area": round(w * h, 6), "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": k, "name": n, "supercategory": "none"} for k, n in enumerate(names, 1)]
    document = {
        "info": {"description": "exported by gunctl export-data"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    text = json.dumps(document, ensure_ascii=False)
    (stage / "annotations" / "instances.json").write_text(text, encoding="utf-8")


def _move_into(stage: Path, folder: Path) -> None:
    """Rename the staged files into ``folder``. Folders are made one component at a time and
    one that is a symlink (``images/`` pointing elsewhere) is refused (``make_dirs_under``):
    nothing is written through a link; a file of the same name that is a link is replaced by
    the file, its target untouched (a rename replaces the link itself)."""
    staged = sorted(stage.rglob("*"))
    for path in staged:  # every folder checked (and made) before the first file moves
        if path.is_dir():
            make_dirs_under(folder, path.relative_to(stage))
    for path in staged:
        if not path.is_dir():
            relative = path.relative_to(stage)
            os.replace(path, make_dirs_under(folder, relative.parent) / relative.name)
