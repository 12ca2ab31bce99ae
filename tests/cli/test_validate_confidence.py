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
    # an untrained model (scores bunched near 0.55): mAP@0.5 is small, so the runtimes' own
    # parity check (boxes within 1 px) is the strict one; here the figures must agree
    assert mine["map_50"] == pytest.approx(reference["map_50"], abs=0.01)
    assert abs(mine["tp"] - reference["tp"]) <= 1
    table = _validate(gunctl, out, path, "--runtime", "onnx")
    assert "val losses" in table.stdout and "n/a" in table.stdout


def test_detections_through_the_inference_core_score_like_evaluate(scored):
    """The --runtime path (load_detector(...).detect on uint8 images, records back to tensors,
    the model's own score floor) run with the torch runtime: the figures of engine.evaluate,
    up to the records' rounding (boxes to 0.01 px, scores to 1e-5), and no losses."""
    import torch

    from gunctl.config import Layout, ValidateConfig
    from gunctl.core.checkpoint import load_checkpoint
    from gunctl.core.dataset import GunDataset, make_loader
    from gunctl.core.engine import evaluate
    from gunctl.core.forward import head_limits
    from gunctl.core.inference import load_detector
    from gunctl.core.model import model_from_checkpoint
    from gunctl.core.split import open_split
    from gunctl.core.validate import evaluate_detector

    out, path = scored
    layout = Layout(out)
    split, _ = open_split(layout, stale="warn")
    loader = make_loader(GunDataset(layout.raw, split["val"]), 0, torch.device("cpu"), batch_size=4)
    model = model_from_checkpoint(load_checkpoint(path), path)
    floor = float(head_limits(model).score_thresh)
    evaluated = evaluate(model, loader, torch.device("cpu"))
    detector = load_detector(path, device="cpu", score_threshold=floor, runtime="torch")
    config = ValidateConfig(checkpoint=path, layout=layout)
    detected = evaluate_detector(detector, loader, config, ["gun"], None)
    counts = [[len(p["scores"]) for p in r.predictions] for r in (evaluated, detected)]
    assert counts[0] == counts[1] and sum(counts[0]) > 0  # the same boxes kept (the floor)
    metrics, reference = detected.metrics, evaluated.metrics
    assert "loss" not in metrics and metrics["images"] == reference["images"]
    for key in ("map_50", "map", "mar_100", "precision", "recall"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-3), key
    assert metrics["map_50_ci"] == pytest.approx(reference["map_50_ci"], abs=1e-3)


def test_run_summary_gives_the_best_epoch_interval():
    from types import SimpleNamespace

    from rich.console import Console

    from gunctl.cli.train_display import fit_summary

    val = {"map_50": 0.7134, "map_50_ci": [0.581, 0.832], "images": 30, "map": 0.3}
    history = [
        {"epoch": 1, "train": {"images": 10, "seconds": 1.0}, "val": {**val, "map_50": 0.6}},
        {"epoch": 2, "train": {"images": 10, "seconds": 1.0}, "val": val},
        {"epoch": 3, "train": {"images": 10, "seconds": 1.0}, "val": {"map": 0.2}},
    ]
    result = SimpleNamespace(
        best_metric=0.7134,
        best_epoch=2,
        history=history,
        run_name="r",
        weights_origin="none",
        last_checkpoint="last.pth",
        best_checkpoint="best.pth",
        promotion=None,
        model_copy=None,
        run_dir="runs/r",
        seconds=3.0,
        stopped_early=None,
    )
    console = Console(width=200, record=True)
    console.print(fit_summary(result))
    text = console.export_text()
    assert "0.7134 (95 % CI 0.58-0.83, 30 images, bootstrap), epoch 2" in text


@pytest.mark.slow
def test_train_summary_and_checkpoint_carry_the_interval(tmp_path, gunctl):
    """One tiny epoch through the CLI: the summary's best line gives the interval and the
    image count, and best.pth keeps them with its val metrics."""
    from helpers import TINY_CLI

    from gunctl.core.checkpoint import load_checkpoint

    out = tmp_path / "artifacts"
    assert gunctl("ingest", "--source", "demo", "--count", "16", "--out", out).exit_code == 0
    result = gunctl("train", "--epochs", "1", "--out", out, "--run-name", "ci", *TINY_CLI)
    assert result.exit_code == 0, result.output
    val = load_checkpoint(out / "runs" / "ci" / "best.pth")["metrics"]["val"]
    low, high = val["map_50_ci"]
    assert low <= val["map_50"] <= high and val["images"] >= 1
    line = next(row for row in result.stdout.splitlines() if "best val mAP@0.5" in row)
    assert f"(95 % CI {low:.2f}-{high:.2f}, {val['images']} images, bootstrap)" in line
