"""Bad inputs per format through the CLI: one line naming the file and the place, the
documented exit code, no traceback; and `export-data` (refusals, round trip)."""

from __future__ import annotations

import json

import pytest
from convert import kaggle_items, to_coco, to_kaggle, voc_xml
from helpers import jpeg_bytes


def one_line(result) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def coco_set(root, document, images=("1.jpg", "2.jpg")):
    (root / "images").mkdir(parents=True)
    for name in images:
        (root / "images" / name).write_bytes(jpeg_bytes(64, 48))
    text = document if isinstance(document, str) else json.dumps(document)
    (root / "instances_default.json").write_text(text)
    return root


def coco_doc(**changes):
    document = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "2.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [1, 2, 20, 20], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "pistol"}, {"id": 2, "name": "rifle"}],
    }
    for path, value in changes.items():
        part, index, key = path.split("__")
        document[part][int(index)][key] = value
    return document


def yolo_set(root, labels: dict[str, str], names="names: [pistol, rifle]\n"):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, text in labels.items():
        (root / "images" / f"{stem}.jpg").write_bytes(jpeg_bytes(64, 48))
        (root / "labels" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(names)
    return root


def voc_set(root, xml: str):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "JPEGImages" / "1.jpg").write_bytes(jpeg_bytes(64, 48))
    (root / "Annotations" / "1.xml").write_text(xml)
    return root


def ingest(gunctl, source, tmp_path, *extra):
    return gunctl("ingest", "--source", source, "--out", tmp_path / "a", *extra)


@pytest.mark.parametrize(
    ("document", "where", "what"),
    [
        (coco_doc(images__1__file_name="gone.jpg"), "images[1].file_name", "'gone.jpg'"),
        (coco_doc(annotations__1__category_id=9), "annotations[1].category_id", "9"),
        (coco_doc(annotations__0__bbox=[5, 5, -10, 10]), "annotations[0].bbox", "negative width"),
    ],
    ids=["missing-image", "unknown-category", "negative-width"],
)
def test_coco_problems_name_the_json_path(gunctl, tmp_path, document, where, what):
    source = coco_set(tmp_path / "coco", document)
    result = ingest(gunctl, source, tmp_path, "--strict")
    assert result.exit_code == 2
    line = one_line(result)
    assert f"instances_default.json:{where}" in line and what in line
    assert not (tmp_path / "a" / "raw").exists()
    relaxed = ingest(gunctl, source, tmp_path)  # without --strict: repaired, reported, exit 0
    assert relaxed.exit_code == 0
    assert f"instances_default.json:{where}" in relaxed.stderr


def test_coco_duplicate_image_ids_and_invalid_json_are_refused(gunctl, tmp_path):
    duplicate = coco_set(tmp_path / "dup", coco_doc(images__1__id=1))
    result = ingest(gunctl, duplicate, tmp_path)
    assert result.exit_code == 2
    assert "instances_default.json: images[1].id 1 repeats images[0].id" in one_line(result)
    broken = coco_set(tmp_path / "bad", '{"images": [1, }')
    result = ingest(gunctl, broken, tmp_path)
    assert result.exit_code == 2
    assert "instances_default.json:1:16: not valid JSON" in one_line(result)


@pytest.mark.parametrize(
    "document",
    [
        {"images": [{"id": [1], "file_name": "1.jpg"}], "categories": [{"id": 1, "name": "a"}]},
        {"images": "x", "annotations": [], "categories": []},
        [1, 2],
        {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}]},
        {"images": [], "categories": [{"id": "x"}]},
    ],
    ids=["list-id", "images-not-a-list", "not-an-object", "no-file-name", "bad-category"],
)
def test_coco_of_the_wrong_shape_is_one_line(gunctl, tmp_path, document):
    result = ingest(gunctl, coco_set(tmp_path / "coco", document), tmp_path)
    assert result.exit_code == 2
    assert "instances_default.json" in one_line(result)


def test_coco_annotations_of_the_wrong_shape_are_dropped_and_reported(gunctl, tmp_path):
    document = coco_doc()
    document["annotations"] += ["junk", {"image_id": [1], "category_id": {"a": 1}}]
    document["annotations"][0]["category_id"] = [1]
    result = ingest(gunctl, coco_set(tmp_path / "coco", document), tmp_path, "--json")
    assert result.exit_code == 0
    problems = json.loads(result.stdout)["problems"]
    assert any("annotations[2].image_id" in p for p in problems)
    assert any("annotations[3].image_id" in p for p in problems)
    assert any("annotations[0].category_id" in p for p in problems)


def test_coco_crowd_boxes_are_left_out_and_counted(gunctl, tmp_path):
    document = coco_doc(annotations__1__iscrowd=1)
    result = ingest(gunctl, coco_set(tmp_path / "coco", document), tmp_path, "--json")
    payload = json.loads(result.stdout)
    assert (payload["boxes"], payload["crowd_left_out"]) == (1, 1)
    assert payload["class_names"] == ["pistol", "rifle"] and payload["format"] == "coco"


@pytest.mark.parametrize(
    ("labels", "where", "what"),
    [
        ({"1": "0 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n"}, "labels/1.txt:2", "not_normalised"),
        ({"1": "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n"}, "labels/1.txt:2", "class 3"),
    ],
    ids=["above-1", "class-beyond-names"],
)
def test_yolo_problems_name_file_and_line(gunctl, tmp_path, labels, where, what):
    source = yolo_set(tmp_path / "yolo", labels)
    result = ingest(gunctl, source, tmp_path, "--strict", "--format", "yolo")
    assert result.exit_code == 2
    line = one_line(result)
    assert where in line
    relaxed = ingest(gunctl, source, tmp_path, "--json")
    assert relaxed.exit_code == 0
    payload = json.loads(relaxed.stdout)
    assert payload["boxes"] == 1 and payload["format"] == "yolo"
    assert any(where in p and (what in p or what in str(payload["problem_counts"]))
               for p in payload["problems"])  # fmt: skip


def test_yolo_without_data_yaml_is_refused_not_silently_empty(gunctl, tmp_path):
    source = yolo_set(tmp_path / "yolo", {"1": "0 0.5 0.5 0.2 0.2\n"}, names=None)
    result = ingest(gunctl, source, tmp_path)
    assert result.exit_code == 2
    line = one_line(result)
    assert str(source) in line and "no data.yaml or classes.txt" in line


def test_voc_malformed_xml_names_the_line(gunctl, tmp_path):
    xml = "<annotation>\n<filename>1.jpg</filename>\n<object><name>gun</name>\n</annotation>"
    result = ingest(gunctl, voc_set(tmp_path / "voc", xml), tmp_path, "--strict")
    assert result.exit_code == 2
    line = one_line(result)
    assert "Annotations/1.xml:4" in line and "not well-formed XML" in line


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>1.jpg</filename><object><name>&lol3;</name><bndbox><xmin>1</xmin>
<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"""


def test_voc_entity_bomb_and_external_entity_are_refused(gunctl, tmp_path):
    result = ingest(gunctl, voc_set(tmp_path / "bomb", BOMB), tmp_path)
    assert result.exit_code == 2
    line = one_line(result)
    assert "Annotations/1.xml: refused" in line and "entity" in line.lower()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    external = (
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<annotation><filename>1.jpg</filename><object><name>&x;</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    result = ingest(gunctl, voc_set(tmp_path / "xxe", external), tmp_path)
    assert result.exit_code == 2
    assert "Annotations/1.xml: refused" in one_line(result)
    assert "TOP-SECRET" not in result.output
    assert not (tmp_path / "a" / "raw").exists()


def test_voc_difficult_objects_are_kept_and_counted(gunctl, tmp_path):
    boxes = [(1, 1, 20, 20, "knife"), (30, 10, 60, 40, "pistol")]
    xml = voc_xml("1.jpg", 64, 48, boxes, difficult={0})
    result = ingest(gunctl, voc_set(tmp_path / "voc", xml), tmp_path, "--json")
    payload = json.loads(result.stdout)
    assert (payload["boxes"], payload["difficult"]) == (2, 1)
    assert payload["class_names"] == ["knife", "pistol"]
    raw = (tmp_path / "a" / "raw" / "Labels" / "1.txt").read_text()
    assert raw == "2\n1 1 20 20 0\n30 10 60 40 1\n"  # the fifth column is the class index


def test_classes_keeps_a_subset_in_order_and_merge_maps_to_one(gunctl, tmp_path):
    source = coco_set(tmp_path / "coco", coco_doc())
    payload = json.loads(ingest(gunctl, source, tmp_path, "--json", "--classes", "rifle").stdout)
    assert payload["class_names"] == ["rifle"] and payload["boxes"] == 1
    assert payload["classes_left_out"] == {"pistol": 1}
    assert (tmp_path / "a" / "raw" / "Labels" / "2.txt").read_text() == "1\n1 2 21 22\n"
    args = ("--json", "--force", "--classes", "rifle,pistol")
    payload = json.loads(ingest(gunctl, source, tmp_path, *args).stdout)
    assert payload["class_names"] == ["rifle", "pistol"]
    assert (tmp_path / "a" / "raw" / "Labels" / "1.txt").read_text() == "1\n5 5 15 15 1\n"
    payload = json.loads(
        ingest(gunctl, source, tmp_path, "--json", "--force", "--merge-classes", "gun").stdout
    )
    assert payload["class_names"] == ["gun"] and payload["boxes"] == 2
    assert (tmp_path / "a" / "raw" / "Labels" / "1.txt").read_text() == "1\n5 5 15 15\n"
    result = ingest(gunctl, source, tmp_path, "--force", "--classes", "knife")
    assert result.exit_code == 2 and "knife not in the source's classes" in one_line(result)


def test_export_data_refuses_a_non_empty_folder_and_round_trips(gunctl, tmp_path, sample_data):
    items = kaggle_items(sample_data, 20)
    out = tmp_path / "a"
    assert (
        gunctl("ingest", "--source", to_kaggle(items, tmp_path / "k"), "--out", out).exit_code == 0
    )
    target = tmp_path / "exported"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = gunctl("export-data", target, "--format", "coco", "--out", out)
    assert result.exit_code == 2 and "not empty; pass --force" in one_line(result)
    result = gunctl("export-data", target, "--format", "coco", "--out", out, "--force")
    assert result.exit_code == 0, result.stderr
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in target.iterdir()) == ["annotations", "images", "keep.txt"]
    again = tmp_path / "again"
    assert gunctl("ingest", "--source", target, "--out", again).exit_code == 0
    first = json.loads((out / "raw" / "manifest.json").read_text())
    second = json.loads((again / "raw" / "manifest.json").read_text())
    assert second["source_format"] == "coco"
    assert second["checksum"] == first["checksum"]  # the same images and boxes, byte for byte


def test_export_data_yolo_writes_names_and_normalised_boxes(gunctl, tmp_path):
    source = coco_set(tmp_path / "coco", coco_doc())
    assert ingest(gunctl, source, tmp_path).exit_code == 0
    target = tmp_path / "yolo"
    result = gunctl("export-data", target, "--format", "yolo", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.stderr
    import yaml

    assert yaml.safe_load((target / "data.yaml").read_text())["names"] == {0: "pistol", 1: "rifle"}
    assert (target / "labels" / "2.txt").read_text() == (
        "1 0.17187500 0.25000000 0.31250000 0.41666667\n"
    )
    back = gunctl("ingest", "--source", target, "--out", tmp_path / "b", "--json")
    assert json.loads(back.stdout)["class_names"] == ["pistol", "rifle"]


def test_export_data_without_ingest_and_unknown_format(gunctl, tmp_path):
    result = gunctl("export-data", tmp_path / "x", "--out", tmp_path / "none")
    assert result.exit_code == 2 and "gunctl ingest" in one_line(result)
    assert not (tmp_path / "x").exists()
    result = gunctl("export-data", tmp_path / "y", "--format", "voc", "--out", tmp_path)
    assert result.exit_code == 2 and "--format voc" in one_line(result)


@pytest.mark.slow
def test_two_classes_train_and_validate_per_class(gunctl, tmp_path, sample_data):
    """Boxes of the sample under two class names (by image), as COCO: one epoch with the tiny
    model, then validate with a per-class table and per-class figures in --json."""
    from helpers import TINY_CLI

    from gunctl.core.checkpoint import load_checkpoint

    items = kaggle_items(
        sample_data, 16, classes=lambda stem, i: "rifle" if int(stem) % 3 else "pistol"
    )
    out = tmp_path / "a"
    source = to_coco(items, tmp_path / "coco", names=["pistol", "rifle"])
    assert gunctl("ingest", "--source", source, "--out", out).exit_code == 0
    assert gunctl("split", "--out", out, "--val-fraction", "0.25").exit_code == 0
    split = json.loads((out / "splits" / "split.json").read_text())
    val_labels = "".join((out / "raw" / "Labels" / i["label"]).read_text() for i in split["val"])
    assert " 0\n" in val_labels and " 1\n" in val_labels  # both classes reach val
    result = gunctl("train", "--epochs", "1", "--out", out, "--run-name", "two", *TINY_CLI)
    assert result.exit_code == 0, result.stderr
    assert "Per class" in result.stdout and "pistol" in result.stdout
    checkpoint = load_checkpoint(out / "runs" / "two" / "last.pth")
    assert checkpoint["class_names"] == ["background", "pistol", "rifle"]
    assert checkpoint["config"]["model"]["num_classes"] == 3
    assert checkpoint["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3
    assert set(checkpoint["metrics"]["val"]["per_class"]) == {"pistol", "rifle"}
    preds, ckpt = tmp_path / "preds", out / "runs" / "two" / "last.pth"
    args = ("--out", out, "--workers", "0", "--save-predictions", preds)
    table = gunctl("validate", ckpt, *args, "--report", tmp_path / "report.json")
    assert table.exit_code == 0, table.stderr
    assert "Per class" in table.stdout and "rifle" in table.stdout
    report = json.loads((tmp_path / "report.json").read_text())  # what --json prints
    per_class = report["metrics"]["per_class"]
    assert report["class_names"] == ["pistol", "rifle"] and set(per_class) == {"pistol", "rifle"}
    assert all(set(v) == {"map", "map_50", "boxes"} for v in per_class.values())
    assert sum(v["boxes"] for v in per_class.values()) == report["metrics"]["boxes"]
    truth = json.loads((preds / "ground_truth.json").read_text())
    assert truth["categories"] == [{"id": 1, "name": "pistol"}, {"id": 2, "name": "rifle"}]
    assert {a["category_id"] for a in truth["annotations"]} == {1, 2}
    other = gunctl("validate", ckpt, "--data", source, "--workers", "0", "--json")
    assert other.exit_code == 0, other.stderr
    assert set(json.loads(other.stdout)["metrics"]["per_class"]) == {"pistol", "rifle"}
    events = b"".join(p.read_bytes() for p in (out / "runs" / "two").glob("events.out.*"))
    assert b"val_per_class/map_50/pistol" in events and b"val_per_class/map/rifle" in events
