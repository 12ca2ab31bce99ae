"""export-data never writes outside its folder, whatever the manifest says."""

from __future__ import annotations

import json

import pytest

from gunctl.config import IngestConfig, Layout
from gunctl.core.formats.writers import export_data
from gunctl.core.ingest import ingest
from gunctl.errors import DataError, UsageError


def test_a_manifest_name_with_a_path_is_refused_before_anything_is_written(tmp_path, small_tree):
    layout = Layout(tmp_path / "a")
    ingest(IngestConfig(source=str(small_tree), layout=layout))
    manifest = json.loads(layout.manifest.read_text())
    manifest["files"][0]["image"] = "../../escaped.jpeg"
    layout.manifest.write_text(json.dumps(manifest))
    target = tmp_path / "out" / "set"
    with pytest.raises(DataError, match="not a plain file name|.image. .*path separator"):
        export_data(layout, target, "coco", force=False)
    assert not list(tmp_path.rglob("escaped.jpeg"))
    assert not target.exists() or list(target.iterdir()) == []  # no staging folder left


def test_export_into_the_raw_tree_is_refused(tmp_path, small_tree):
    layout = Layout(tmp_path / "a")
    ingest(IngestConfig(source=str(small_tree), layout=layout))
    with pytest.raises(UsageError, match="inside"):
        export_data(layout, layout.raw / "Images" / "x", "yolo", force=True)


def test_an_image_changed_since_ingest_is_refused(tmp_path, small_tree):
    layout = Layout(tmp_path / "a")
    ingest(IngestConfig(source=str(small_tree), layout=layout))
    (layout.raw / "Images" / "2.jpeg").write_bytes(b"tampered")
    with pytest.raises(DataError, match="2.jpeg: changed since ingest"):
        export_data(layout, tmp_path / "out", "yolo", force=False)
    assert not (tmp_path / "out").exists()  # nothing written, and the folder it made removed
