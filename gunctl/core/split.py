"""A seeded train/val split of the ingested images, saved as JSON.

``make_split`` is pure: the same entries, seed, fraction and subset give the same split,
and ``split_bytes`` serialises it the same way, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from gunctl.config import SplitConfig, check_fraction
from gunctl.core import tree
from gunctl.core.fileio import read_document, write_bytes_atomic
from gunctl.core.ingest import read_manifest
from gunctl.errors import DataError, UsageError

SPLIT_FORMAT = "gunctl-split"
SPLIT_SCHEMA = 1
PARTS = ("train", "val")
_ITEM_KEYS = ("image", "label", "boxes", "width", "height")  # sizes feed aspect-ratio batching


@dataclass(frozen=True)
class SplitResult:
    path: Path
    split: dict
    capped: bool  # --subset asked for more images than there are


def make_split(
    entries: list[dict], seed: int, val_fraction: float, subset: int | None, checksum: str
) -> dict:
    """Sample ``subset`` entries (all when None), then hold out ``val_fraction`` of them."""
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
    parts = {"val": chosen[:n_val], "train": chosen[n_val:]}
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
    """Read the manifest, make the split and write it atomically."""
    config.check()
    manifest = read_manifest(config.layout)
    entries = manifest.get("files", [])
    split = make_split(
        entries, config.seed, config.val_fraction, config.subset, manifest.get("checksum", "")
    )
    path = config.layout.split_file
    write_bytes_atomic(path, split_bytes(split))
    capped = config.subset is not None and config.subset > len(entries)
    return SplitResult(path, split, capped)


def load_split(path: Path) -> dict:
    """Read a split file; a DataError names the file when it is missing or malformed."""
    split = read_document(path, SPLIT_FORMAT, "split", "run `gunctl split` first")
    for part in PARTS:
        if not isinstance(split.get(part), list):
            raise DataError(f"{path}: missing the {part!r} list")
    return split


def part_counts(split: dict) -> dict[str, dict[str, int]]:
    """Images and boxes per part, for the summary table."""
    return {
        part: {
            "images": len(split[part]),
            "boxes": sum(int(i.get("boxes", 0)) for i in split[part]),
        }
        for part in PARTS
    }
