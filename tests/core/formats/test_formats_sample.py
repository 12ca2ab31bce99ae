"""Each format, made from the real sample in the test, ingests to the same images and boxes
as the Kaggle layout (YOLO within float tolerance), from a folder and from a zip."""

from __future__ import annotations

import pytest
from convert import kaggle_items, to_coco, to_kaggle, to_voc, to_yolo, zip_folder

from gunctl.config import IngestConfig, Layout
from gunctl.core.ingest import ingest, read_manifest
from gunctl.core.labels import read_targets

COUNT = 20
WRITERS = {"yolo": to_yolo, "coco": to_coco, "voc": to_voc}


def ingested(source, root, **kw):
    layout = Layout(root)
    report = ingest(IngestConfig(source=str(source), layout=layout, **kw))
    return report, layout


def boxes_by_image(layout):
    manifest = read_manifest(layout)
    result = {}
    for entry in manifest["files"]:
        data = (layout.raw / "Labels" / entry["label"]).read_bytes()
        boxes, _ = read_targets(data, entry["width"], entry["height"], entry["label"])
        result[entry["image"]] = (entry["image_sha256"], boxes)
    return manifest, result


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, request):
    from conftest import SAMPLE

    if not (SAMPLE / "Images").is_dir():
        pytest.skip(f"the real sample is not at {SAMPLE}")
    root = tmp_path_factory.mktemp("baseline")
    items = kaggle_items(SAMPLE, COUNT)
    _, layout = ingested(to_kaggle(items, root / "kaggle"), root / "out")
    return items, boxes_by_image(layout)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_format_ingests_to_the_same_images_and_boxes(fmt, packed, baseline, tmp_path):
    items, (kaggle_manifest, expected) = baseline
    source = WRITERS[fmt](items, tmp_path / f"{fmt}-set")
    if packed:
        source = zip_folder(source, tmp_path / f"{fmt}.zip")
    report, layout = ingested(source, tmp_path / "out")
    manifest, got = boxes_by_image(layout)
    assert report.problems == []
    assert manifest["source_format"] == fmt and manifest["class_names"] == ["gun"]
    assert sorted(got) == sorted(expected) and len(got) == COUNT
    for image, (sha, boxes) in expected.items():
        assert got[image][0] == sha
        flat_got = [v for box in got[image][1] for v in box]  # approx takes flat sequences
        flat_expected = [v for box in boxes for v in box]
        assert len(got[image][1]) == len(boxes)
        assert flat_got == pytest.approx(flat_expected, abs=0.01 if fmt == "yolo" else 0)
    if fmt != "yolo":  # exact: the very same raw tree and checksum as the Kaggle layout
        assert manifest["checksum"] == kaggle_manifest["checksum"]
