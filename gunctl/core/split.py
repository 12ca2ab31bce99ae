"""A seeded train/val split of the ingested images, saved as JSON.

``make_split`` is pure: the same entries, seed, fraction and subset give the same split,
and ``split_bytes`` serialises it the same way, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from gunctl.config import Layout, SplitConfig, check_fraction
from gunctl.core import tree
from gunctl.core.fileio import read_document, write_bytes_atomic
from gunctl.core.manifest import class_names_of, read_manifest, verify_files
from gunctl.core.rawlock import RawLock
from gunctl.core.schema import check_fields
from gunctl.errors import DataError, UsageError

log = logging.getLogger("gunctl")

SPLIT_FORMAT = "gunctl-split"
SPLIT_SCHEMA = 1
PARTS = ("train", "val")
_ITEM_KEYS = ("image", "label", "boxes", "width", "height")  # sizes feed aspect-ratio batching
DOCUMENT_SPEC = {
    "schema": "int>=1",
    "seed": "int",
    "val_fraction": "fraction",
    "subset": "int>=2?",
    "manifest_checksum": "str",
    "train": "list",
    "val": "list",
}
ITEM_SPEC = {
    "image": "name",
    "label": "name",
    "boxes": "int>=0",
    "width": "int>=1",
    "height": "int>=1",
}


@dataclass(frozen=True)
class SplitResult:
    path: Path
    split: dict
    capped: bool  # --subset asked for more images than there are


def make_split(
    entries: list[dict],
    seed: int,
    val_fraction: float,
    subset: int | None,
    checksum: str,
    keep_source_split: bool = False,
) -> dict:
    """Sample ``subset`` entries (all when None), then hold out ``val_fraction`` of them.

    Entries of a multi-class data set (with per-class box counts, ``classes``) are held out
    per class (stratified), so that rare classes reach val too. ``keep_source_split``
    keeps the source's own train/val (YOLO and Roboflow folders); its test images are left out.
    """
    if keep_source_split:
        return _source_split(entries, seed, subset, checksum)
    check_fraction("--val-fraction", val_fraction)
    ordered = sorted(entries, key=lambda e: tree.natural_key(e["stem"]))
    rng = random.Random(seed)
    count = len(ordered) if subset is None else min(subset, len(ordered))
    if count < 2:
        raise UsageError(
            f"a split needs at least 2 images (one to train, one to validate), got {count}"
        )
    chosen = rng.sample(ordered, count) if count < len(ordered) else list(ordered)
    rng.shuffle(chosen)
    n_val = min(max(1, round(count * val_fraction)), count - 1)
    if any("classes" in e for e in chosen):
        parts = _stratified(chosen, val_fraction, n_val)
    else:
        parts = {"val": chosen[:n_val], "train": chosen[n_val:]}
    return _document(parts, seed, val_fraction, subset, checksum)


def _stratified(chosen: list[dict], val_fraction: float, n_val: int) -> dict[str, list[dict]]:
    """Group each image by its rarest class (images without boxes in a group of their own),
    hold out ``val_fraction`` of every group of two or more, then even out to ``n_val``."""
    totals: dict[int, int] = {}
    for entry in chosen:
        for k, n in enumerate(entry.get("classes", [])):
            totals[k] = totals.get(k, 0) + (n > 0)
    groups: dict[int, list[dict]] = {}
    for entry in chosen:
        present = [k for k, n in enumerate(entry.get("classes", [])) if n > 0]
        key = min(present, key=lambda k: (totals[k], k)) if present else -1
        groups.setdefault(key, []).append(entry)
    val, train = [], []
    for key in sorted(groups, key=lambda k: (len(groups[k]), k)):
        members = groups[key]
        take = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val += members[:take]
        train += members[take:]
    while len(val) > n_val and len(val) > 1:  # the largest groups give back first
        train.append(val.pop())
    while len(val) < n_val and len(train) > 1:
        val.append(train.pop())
    return {"val": val, "train": train}


def _source_split(entries: list[dict], seed: int, subset: int | None, checksum: str) -> dict:
    parts = {part: [e for e in entries if e.get("source_split") == part] for part in PARTS}
    if not parts["train"] or not parts["val"]:
        raise UsageError(
            "--keep-source-split: the source has no train/ and val/ (or valid/) images; "
            "ingest a YOLO or Roboflow export with both, or split without it"
        )
    if subset is not None:
        fake = {**parts, "subset": None}
        parts = subset_split(fake, subset, seed)
    document = _document(parts, seed, None, subset, checksum)
    document["source_split"] = True
    return document


def _document(parts, seed, val_fraction, subset, checksum) -> dict:
    split: dict = {
        "format": SPLIT_FORMAT,
        "schema": SPLIT_SCHEMA,
        "seed": seed,
        "val_fraction": val_fraction,
        "subset": subset,
        "manifest_checksum": checksum,
    }
    for part in PARTS:
        items = sorted(parts[part], key=lambda e: tree.natural_key(e["stem"]))
        split[part] = [{key: e[key] for key in _ITEM_KEYS} for e in items]
    return split


def subset_split(split: dict, count: int, seed: int) -> dict:
    """A seeded sample of ``count`` images of ``split``, keeping its train/val proportion.

    Validation images stay validation images: nothing moves between the parts.
    """
    total = len(split["train"]) + len(split["val"])
    if count >= total:
        return split
    if count < 2:
        raise UsageError(
            f"--subset needs at least 2 images (one to train, one to validate), got {count}"
        )
    rng = random.Random(seed)
    n_val = min(max(1, round(count * len(split["val"]) / total)), count - 1, len(split["val"]))
    n_train = min(count - n_val, len(split["train"]))
    picked = {"val": rng.sample(split["val"], n_val), "train": rng.sample(split["train"], n_train)}
    order = {id(item): i for part in PARTS for i, item in enumerate(split[part])}
    result = {**split, "subset": count}
    for part in PARTS:
        result[part] = sorted(picked[part], key=lambda item: order[id(item)])
    return result


def split_bytes(split: dict) -> bytes:
    return (json.dumps(split, indent=2) + "\n").encode("utf-8")


def split_checksum(split: dict) -> str:
    return hashlib.sha256(split_bytes(split)).hexdigest()


def create_split(config: SplitConfig) -> SplitResult:
    """Read and verify the manifest (and the files' SHA-256), make the split, write it."""
    config.check()
    with RawLock(config.layout, exclusive=False):
        manifest = read_manifest(config.layout)
        entries = manifest["files"]
        verify_files(config.layout, manifest, entries, config.layout.manifest)
        split = make_split(
            entries,
            config.seed,
            config.val_fraction,
            config.subset,
            manifest["checksum"],
            config.keep_source_split,
        )
        split["class_names"] = class_names_of(manifest)
        path = config.layout.split_file
        write_bytes_atomic(path, split_bytes(split))
    capped = config.subset is not None and config.subset > len(entries)
    return SplitResult(path, split, capped)


def load_split(path: Path) -> dict:
    """Read a split file; a DataError names the file when it is missing or malformed
    (any field of the wrong type, an image name that is not a plain name in ``raw/``)."""
    split = read_document(path, SPLIT_FORMAT, "split", "run `gunctl split` first")
    check_fields(split, DOCUMENT_SPEC, str(path))
    if split["schema"] > SPLIT_SCHEMA:
        raise DataError(f"{path}: schema {split['schema']} is newer than this gunctl reads")
    for part in PARTS:
        for index, item in enumerate(split[part]):
            check_fields(item, ITEM_SPEC, f"{path}: {part}[{index}]")
    return split


def open_split(layout: Layout, stale: str) -> tuple[dict, dict]:
    """The split and the manifest, checked against each other and against the files.

    A split made from other data (its ``manifest_checksum`` is not the manifest's): ``stale``
    "refuse" raises (train), "warn" logs a warning (validate). Every image and label of the
    split must be in the manifest, inside ``raw/``, with the manifest's SHA-256. The caller
    holds the shared ``RawLock``.
    """
    path = layout.split_file
    split = load_split(path)
    manifest = read_manifest(layout)
    if split["manifest_checksum"] != manifest["checksum"]:
        message = (
            f"{path} was made from other data than {layout.manifest} (the data were ingested "
            "again since); run `gunctl split` to make a new one"
        )
        if stale == "refuse":
            raise DataError(message)
        log.warning("%s", message)
    verify_files(layout, manifest, split["train"] + split["val"], path)
    return split, manifest


def part_counts(split: dict) -> dict[str, dict[str, int]]:
    """Images and boxes per part, for the summary table."""
    return {
        part: {
            "images": len(split[part]),
            "boxes": sum(int(i.get("boxes", 0)) for i in split[part]),
        }
        for part in PARTS
    }
