"""The manifest and split readers: good files read back, tampered ones are one-line errors."""

from __future__ import annotations

import json

import pytest

from gunctl.config import Layout
from gunctl.core.ingest import data_checksum, read_manifest
from gunctl.core.split import load_split, make_split, split_bytes
from gunctl.errors import DataError

ENTRY = {"stem": "1", "image": "1.jpeg", "label": "1.txt", "boxes": 1, "width": 8, "height": 6}
HEAD = (
    '"format": "gunctl-split", "schema": 1, "seed": 0, "val_fraction": 0.2, "manifest_checksum": ""'
)


def write_split(path, split) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(split_bytes(split))


def test_a_written_split_reads_back_the_same(tmp_path):
    entries = [{**ENTRY, "stem": str(i), "image": f"{i}.jpeg"} for i in range(5)]
    split = make_split(entries, 0, 0.2, None, "sum")
    write_split(tmp_path / "split.json", split)
    assert load_split(tmp_path / "split.json") == split


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no split"),
        ("{not json", "unreadable split"),
        ('["a list"]', "not a gunctl split"),
        ('{"format": "other", "train": [], "val": []}', "not a gunctl split"),
        ('{"format": "gunctl-split", "train": [], "val": []}', "missing 'schema'"),
        ("{" + HEAD + ', "train": []}', "missing 'val'"),
        ("{" + HEAD + ', "train": {}, "val": []}', "'train' must be a list"),
        ("{" + HEAD + ', "train": [{"image": "../x"}], "val": []}', "train.0.: 'image'"),
    ],
)
def test_tampered_splits_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "split.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=message) as caught:
        load_split(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_manifest_reads_back_and_refuses_another_document(tmp_path):
    layout = Layout(tmp_path)
    with pytest.raises(DataError, match="no manifest; ingest a data set first"):
        read_manifest(layout)
    layout.raw.mkdir(parents=True)
    entry = {**ENTRY, "image_sha256": "0" * 64, "label_sha256": "1" * 64}
    document = {"format": "gunctl-raw", "schema": 1, "files": [entry]}
    document["checksum"] = data_checksum(document["files"])
    layout.manifest.write_text(json.dumps(document))
    assert read_manifest(layout)["files"] == [entry]
    layout.manifest.write_text(json.dumps({**document, "checksum": "0" * 64}))
    with pytest.raises(DataError, match="does not match its checksum"):
        read_manifest(layout)
    layout.manifest.write_text(json.dumps({**document, "format": "gunctl-split"}))
    with pytest.raises(DataError, match="not a gunctl manifest"):
        read_manifest(layout)
    layout.manifest.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DataError, match="unreadable manifest"):
        read_manifest(layout)
