"""The real sample: 300 images of the Kaggle data set, beside the project (../shared)."""

from PIL import Image

from gunctl.config import IngestConfig, Layout
from gunctl.core.ingest import ingest, read_manifest
from gunctl.core.labels import parse_label


def test_ingest_real_sample_counts_and_boxes_inside(tmp_path, sample_data):
    layout = Layout(tmp_path / "artifacts")
    report = ingest(IngestConfig(source=str(sample_data), layout=layout))
    source_labels = sorted((sample_data / "Labels").iterdir())
    assert (
        report.images == len(list((sample_data / "Images").iterdir())) == len(source_labels) == 300
    )
    expected_boxes = sum(int(p.read_text().split()[0]) for p in source_labels)
    dropped = sum(p.kind in ("box_outside", "zero_area_box") for p in report.problems)
    assert report.boxes == expected_boxes - dropped
    manifest = read_manifest(layout)
    assert manifest["counts"]["images"] == 300
    for entry in manifest["files"]:
        width, height = Image.open(layout.raw / "Images" / entry["image"]).size
        assert (entry["width"], entry["height"]) == (width, height)
        parsed = parse_label((layout.raw / "Labels" / entry["label"]).read_bytes(), entry["label"])
        assert parsed.problems == []
        for (x1, y1, x2, y2), _ in parsed.boxes:
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
