"""``raw/manifest.json``: its schema, its checksum, and the check of the files it lists.

The manifest is read back by split, train and validate, so it is untrusted: every field is
checked (``FILE_SPEC``), the file list must match its checksum, and the image and label names
must be plain names inside ``raw/`` (``paths``). ``verify_files`` compares the SHA-256 of the
files a command is about to read with the manifest's, so an edited or swapped file under
``raw/`` is one line and exit 2, not silent training on other data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gunctl.config import Layout
from gunctl.core import tree
from gunctl.core.fileio import read_document
from gunctl.core.paths import confine
from gunctl.core.schema import check_fields
from gunctl.errors import DataError

MANIFEST_FORMAT = "gunctl-raw"
MANIFEST_SCHEMA = 1
DOCUMENT_SPEC = {"schema": "int>=1", "checksum": "sha256", "files": "list"}
FILE_SPEC = {
    "stem": "str",
    "image": "name",
    "label": "name",
    "width": "int>=1",
    "height": "int>=1",
    "boxes": "int>=0",
    "image_sha256": "sha256",
    "label_sha256": "sha256",
}
_FIX = "re-run `gunctl ingest --force`"


def read_manifest(layout: Layout) -> dict:
    """The checked manifest of the ingested tree; a DataError names the file when unusable."""
    path = layout.manifest
    manifest = read_document(
        path, MANIFEST_FORMAT, "manifest", "ingest a data set first (`gunctl ingest`)"
    )
    check_fields(manifest, DOCUMENT_SPEC, str(path))
    if manifest["schema"] > MANIFEST_SCHEMA:
        raise DataError(f"{path}: schema {manifest['schema']} is newer than this gunctl reads")
    for index, entry in enumerate(manifest["files"]):
        check_fields(entry, FILE_SPEC, f"{path}: files[{index}]")
    if data_checksum(manifest["files"]) != manifest["checksum"]:
        raise DataError(f"{path}: the file list does not match its checksum (edited?); {_FIX}")
    return manifest


def class_names_of(document: dict) -> list[str]:
    """The class names of a manifest or split (label k+1 of the model is name k); ``["gun"]``
    for those written before gunctl knew several classes."""
    names = document.get("class_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return ["gun"]


def data_checksum(entries: list[dict]) -> str:
    """The data's identity: a hash of the file list with its checksums (not of timestamps)."""
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def verify_files(layout: Layout, manifest: dict, items: list[dict], listed_in: Path) -> None:
    """Each item's image and label (``{"image", "label"}``) is in the manifest, inside
    ``raw/``, and has the manifest's SHA-256; else one DataError naming the file."""
    by_image = {entry["image"]: entry for entry in manifest["files"]}
    for item in items:
        entry = by_image.get(item["image"])
        if entry is None or entry["label"] != item["label"]:
            raise DataError(
                f"{listed_in}: {tree.IMAGES}/{item['image']} is not in {layout.manifest} "
                "(the data changed since); run `gunctl split`"
            )
        for folder, name, digest in (
            (tree.IMAGES, entry["image"], entry["image_sha256"]),
            (tree.LABELS, entry["label"], entry["label_sha256"]),
        ):
            _verify(confine(layout.raw / folder, name, "data file"), digest)


def _verify(path: Path, expected: str) -> None:
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: not a regular file; {_FIX}")
    try:
        with path.open("rb") as handle:
            found = hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the ingested data; {_FIX}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if found != expected:
        raise DataError(f"{path}: changed since ingest (SHA-256 differs from the manifest); {_FIX}")
