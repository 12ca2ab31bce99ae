import json
import zipfile

import pytest
from helpers import jpeg_bytes, write_tree

from gunctl.config import IngestConfig, Layout
from gunctl.core.ingest import ingest, read_manifest
from gunctl.errors import DataError, SourceError, UsageError


def run(source, tmp_path, **kw):
    layout = Layout(tmp_path / "artifacts")
    return ingest(IngestConfig(source=str(source), layout=layout, **kw)), layout


def test_folder_ingest_copies_checks_and_writes_manifest(tmp_path, small_tree):
    report, layout = run(small_tree, tmp_path)
    assert (report.images, report.boxes, report.empty_images) == (3, 3, 1)
    assert report.problems == []
    assert sorted(p.name for p in (layout.raw / "Images").iterdir()) == [
        "1.jpeg",
        "10.jpeg",
        "2.jpeg",
    ]
    manifest = read_manifest(layout)
    assert manifest["counts"]["images"] == 3
    assert [f["stem"] for f in manifest["files"]] == ["1", "2", "10"]  # numeric order
    assert all(len(f["image_sha256"]) == 64 for f in manifest["files"])
    assert (small_tree / "Images" / "1.jpeg").exists()  # the source is untouched


def test_pairs_by_stem_and_reports_orphans(tmp_path):
    src = write_tree(
        tmp_path / "src",
        {"1.jpeg": jpeg_bytes(), "2.jpeg": jpeg_bytes(), "3.JPG": jpeg_bytes()},
        {"2.txt": "1\n1 1 9 9\n", "3.txt": "0\n", "4.txt": "0\n"},
    )
    report, layout = run(src, tmp_path)
    assert report.images == 2
    by_kind = {p.kind: p.file for p in report.problems}
    assert by_kind == {
        "image_without_label": "Images/1.jpeg",
        "label_without_image": "Labels/4.txt",
    }
    manifest = read_manifest(layout)
    assert [(f["image"], f["label"]) for f in manifest["files"]] == [
        ("2.jpeg", "2.txt"),
        ("3.JPG", "3.txt"),
    ]


def test_boxes_crossing_the_border_are_clipped_in_the_written_labels(tmp_path):
    src = write_tree(
        tmp_path / "src", {"1.jpeg": jpeg_bytes(64, 48)}, {"1.txt": "1\n-4 10 80 30\n"}
    )
    report, layout = run(src, tmp_path)
    assert [p.kind for p in report.problems] == ["box_clipped"]
    assert (layout.raw / "Labels" / "1.txt").read_text() == "1\n0 10 64 30\n"


def test_strict_fails_and_writes_nothing(tmp_path):
    src = write_tree(
        tmp_path / "src", {"1.jpeg": jpeg_bytes(64, 48)}, {"1.txt": "1\n-4 10 80 30\n"}
    )
    with pytest.raises(DataError, match="--strict.*Labels/1.txt:2"):
        run(src, tmp_path, strict=True)
    assert not (tmp_path / "artifacts" / "raw").exists()
    assert not (tmp_path / "artifacts").exists()  # no staging, not even the --out it made


def test_existing_raw_needs_force_and_survives_a_failed_ingest(tmp_path, small_tree):
    _, layout = run(small_tree, tmp_path)
    before = layout.manifest.read_bytes()
    with pytest.raises(UsageError, match="--force"):
        run(small_tree, tmp_path)
    with pytest.raises(SourceError):
        run(tmp_path / "missing", tmp_path, force=True)
    assert layout.manifest.read_bytes() == before
    report, _ = run(small_tree, tmp_path, force=True)
    assert report.images == 3


def test_zip_with_top_level_folder(tmp_path, small_tree):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in small_tree.rglob("*"):
            if path.is_file():
                zf.write(path, f"guns/{path.relative_to(small_tree).as_posix()}")
        zf.writestr("__MACOSX/._1.jpeg", b"junk")
    report, layout = run(archive, tmp_path)
    assert report.images == 3 and report.problems == []


def test_zip_flat_layout(tmp_path, small_tree):
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in small_tree.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(small_tree).as_posix())
    report, _ = run(archive, tmp_path)
    assert report.images == 3


def test_demo_source_is_deterministic(tmp_path):
    a, la = run("demo", tmp_path / "a", count=8, seed=1)
    b, lb = run("demo", tmp_path / "b", count=8, seed=1)
    assert a.images == 8 and a.problems == []
    assert read_manifest(la)["checksum"] == read_manifest(lb)["checksum"]


def test_kagglehub_offline_from_a_prefilled_cache(tmp_path, small_tree, monkeypatch):
    """The real kagglehub.dataset_download, served from KAGGLEHUB_CACHE without network."""
    cache = tmp_path / "kagglecache"
    dataset = cache / "datasets" / "issaisasank" / "guns-object-detection"
    write_tree(dataset / "versions" / "1", {}, {})
    for sub in ("Images", "Labels"):
        for path in (small_tree / sub).iterdir():
            (dataset / "versions" / "1" / sub / path.name).write_bytes(path.read_bytes())
    (dataset / "1.complete").touch()
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    layout = Layout(tmp_path / "artifacts")
    report = ingest(IngestConfig(source="kaggle", version=1, layout=layout))
    assert report.version == 1 and report.images == 3
    manifest = json.loads(layout.manifest.read_text())
    assert manifest["source"] == "kaggle:issaisasank/guns-object-detection"
    assert manifest["version"] == 1
    assert (dataset / "versions" / "1" / "Images" / "1.jpeg").exists()  # copied, not moved
    again = ingest(IngestConfig(source="kaggle", version=1, layout=layout, force=True))
    assert again.images == 3


def test_kaggle_offline_without_cache_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SourceError, match="--source PATH"):
        ingest(IngestConfig(source="kaggle", version=1, layout=Layout(tmp_path / "a")))


def test_the_reports_dict_gives_the_size_ranges_and_survives_json(tmp_path):
    # Sizes chosen so that the widest image is not the tallest (the largest by area hides both).
    src = write_tree(
        tmp_path / "src",
        {"1.jpeg": jpeg_bytes(80, 20), "2.jpeg": jpeg_bytes(30, 70)},
        {"1.txt": "1\n1 1 9 9\n", "2.txt": "0\n"},
    )
    report, _ = run(src, tmp_path)
    shown = json.loads(json.dumps(report.as_dict()))
    assert shown["width_range"] == [30, 80] and shown["height_range"] == [20, 70]
    assert (shown["images"], shown["boxes"], shown["empty_images"]) == (2, 1, 1)
    assert shown["problem_counts"] == {} and shown["format"] == "kaggle"
