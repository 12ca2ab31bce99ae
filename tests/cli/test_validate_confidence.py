"""gunctl validate says what its figures rest on (images, boxes, a 95 % bootstrap interval) and
scores what --runtime runs."""

import json

import pytest
from helpers import tiny_checkpoint

from gunctl.core import confidence


@pytest.fixture(scope="module")
def scored(demo_layout, tmp_path_factory):
    """A tiny untrained checkpoint (calibrated: its scores spread) beside the demo data."""
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    return demo_layout.root, path


def _validate(gunctl, out, path, *args):
    return gunctl("validate", path, "--out", out, "--split", "val", "--workers", "0", *args)


def test_json_and_table_carry_images_and_the_interval(scored, gunctl):
    out, path = scored
    result = _validate(gunctl, out, path, "--json", "--runtime", "torch")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics = report["metrics"]
    split = json.loads((out / "splits" / "split.json").read_text())
    assert report["images"] == metrics["images"] == len(split["val"])
    assert report["boxes"] == metrics["boxes"] > 0
    assert report["runtime"] == "torch" and report["losses"] is None and "loss" in metrics
    assert "bootstrap over images" in report["confidence"]
    low, high = metrics["map_50_ci"]
    assert 0.0 <= low <= metrics["map_50"] <= high <= 1.0
    assert metrics["ci_level"] == 0.95 and metrics["ci_resamples"] == 1000
    for key in ("precision_ci", "recall_ci"):
        assert len(metrics[key]) == 2 and metrics[key][0] <= metrics[key][1]

    table = _validate(gunctl, out, path, "--runtime", "torch")
    assert table.exit_code == 0, table.output
    line = next(row for row in table.stdout.splitlines() if "mAP@0.5 " in row)
    count = len(split["val"])
    assert f"{metrics['map_50']:.4f} (95 % CI {low:.2f}-{high:.2f}, {count} images" in line
    assert "val loss (total)" in table.stdout


def test_the_interval_is_the_bootstrap_of_the_scored_detections(scored, gunctl, tmp_path):
    """The COCO files --save-predictions writes, re-scored by core/confidence, give the
    interval validate printed (the same detections, the same seeded resamples)."""
    import torch

    out, path = scored
    saved = tmp_path / "saved"
    result = _validate(gunctl, out, path, "--json", "--save-predictions", saved)
    metrics = json.loads(result.stdout)["metrics"]
    truth = json.loads((saved / "ground_truth.json").read_text())
    found = json.loads((saved / "predictions.json").read_text())
    predictions, targets = [], []
    for image in truth["images"]:

        def boxes(entries):
            xywh = torch.tensor([e["bbox"] for e in entries], dtype=torch.float64).reshape(-1, 4)
            return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)

        mine = [d for d in found if d["image_id"] == image["id"]]
        gt = [a for a in truth["annotations"] if a["image_id"] == image["id"]]
        predictions.append(
            {
                "boxes": boxes(mine),
                "scores": torch.tensor([d["score"] for d in mine]),
                "labels": torch.tensor([d["category_id"] for d in mine], dtype=torch.int64),
            }
        )
        targets.append({"boxes": boxes(gt), "labels": torch.tensor([a["category_id"] for a in gt])})
    again = confidence.intervals(predictions, targets)  # rounded boxes and scores: close
    assert again["map_50_ci"] == pytest.approx(metrics["map_50_ci"], abs=0.02)


def test_runtime_onnx_scores_like_torch(scored, gunctl):
    """What predict runs: onnx detections scored by the same metric code, without losses."""
    out, path = scored
    torch_report = json.loads(_validate(gunctl, out, path, "--json", "--runtime", "torch").stdout)
    result = _validate(gunctl, out, path, "--json", "--runtime", "onnx")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    if report["runtime"] != "onnx":
        pytest.skip("core/inference.py runs only torch so far (--runtime onnx not in yet)")
    assert report["losses"].startswith("n/a") and "loss" not in report["metrics"]
    mine, reference = report["metrics"], torch_report["metrics"]
    assert mine["images"] == reference["images"]
    for key in ("map_50", "mar_100", "recall"):  # an untrained model: recall is what varies
        assert mine[key] == pytest.approx(reference[key], abs=0.01), key
    assert abs(mine["tp"] - reference["tp"]) <= 1
    table = _validate(gunctl, out, path, "--runtime", "onnx")
    assert "val losses" in table.stdout and "n/a" in table.stdout
