"""train, validate and tb through the CLI, on the demo data with a tiny model."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import TINY_CLI, start_long_training

from gunctl.core.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(module_tmp):
    """Demo data, and one tiny run trained through the CLI (shared by the tests below)."""
    from typer.testing import CliRunner

    from gunctl.cli import app

    out = module_tmp / "artifacts"
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["ingest", "--source", "demo", "--count", "16", "--out", str(out)]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["train", "--epochs", "1", "--out", str(out), "--run-name", "first", *TINY_CLI]
    )
    assert result.exit_code == 0, result.output
    return out, result


@pytest.mark.slow
def test_train_makes_a_split_and_reports(trained):
    out, result = trained
    assert "no split at" in result.stderr and "made one" in result.stderr
    assert (out / "splits" / "split.json").exists()
    assert (
        "epoch 1/1" in result.stdout and "train loss" in result.stdout
    )  # one plain line per epoch
    assert "best val mAP@0.5" in result.stdout
    for name in ("runs/first/last.pth", "runs/first/best.pth", "models/fasterrcnn.pth"):
        assert (out / name).exists(), name
    assert "\x1b[" not in result.stdout  # no animation or colour codes when not a terminal


@pytest.mark.slow
def test_validate_table_json_and_gates(trained, gunctl, tmp_path):
    out, _ = trained
    ckpt = out / "runs" / "first" / "best.pth"
    # torch: the runtime training validated in, with its losses (auto may pick onnxruntime)
    table = gunctl("validate", ckpt, "--out", out, "--runtime", "torch")
    assert table.exit_code == 0, table.output
    for label in (
        "mAP@0.5:0.95",
        "mAP@0.75",
        "mAR@100",
        "precision",
        "recall",
        "F1",
        "loss_objectness",
        "images/s",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
    ):
        assert label in table.stdout, label

    report_file = tmp_path / "report.json"
    result = gunctl(
        "validate", ckpt, "--out", out, "--json", "--report", report_file, "--runtime", "torch"
    )
    assert result.exit_code == 0
    report = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert json.loads(report_file.read_text()) == report
    metrics = report["metrics"]
    assert report["epoch"] == 1 and report["run"] == "first" and report["passed"] is True
    assert metrics["images"] == 3 and 0.0 <= metrics["map_50"] <= 1.0
    stored = load_checkpoint(ckpt)["metrics"]["val"]
    assert metrics["map_50"] == pytest.approx(stored["map_50"])  # the same code path as training
    assert metrics["loss"] == pytest.approx(stored["loss"])

    above = metrics["map_50"] + 0.01
    failed = gunctl("validate", ckpt, "--out", out, "--json", "--min-map50", f"{above:.4f}")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["passed"] is False
    assert "below --min-map50" in failed.stderr
    assert gunctl("validate", ckpt, "--out", out, "--min-map50", "0").exit_code == 0
    assert gunctl("validate", ckpt, "--out", out, "--min-map", "1").exit_code == 1


@pytest.mark.slow
def test_train_names_the_recipe_and_validate_tta_reports_beside(trained, gunctl):
    out, result = trained
    assert "recipe scratch" in result.stdout  # --weights none: the scratch recipe
    stored = load_checkpoint(out / "runs" / "first" / "last.pth")["config"]
    assert stored["recipe"] == "scratch" and stored["ema"] and stored["mosaic"] > 0
    assert stored["model"]["name"] == "fasterrcnn_mobilenet_v3_large_320_fpn"  # as given
    ckpt = out / "runs" / "first" / "last.pth"
    report = json.loads(gunctl("validate", ckpt, "--out", out, "--json", "--tta").stdout)
    assert report["tta"]["images"] == report["metrics"]["images"] == 3
    assert 0.0 <= report["tta"]["map_50"] <= 1.0
    table = gunctl("validate", ckpt, "--out", out, "--tta")
    assert table.exit_code == 0 and "With flip TTA" in table.stdout


@pytest.mark.slow
def test_minutes_goes_not_with_epochs(trained, gunctl):
    out, _ = trained
    result = gunctl("train", "--minutes", "1", "--epochs", "2", "--out", out, *TINY_CLI)
    assert result.exit_code == 2 and "--minutes" in result.stderr
    result = gunctl("train", "--multiscale", "12,x", "--out", out, *TINY_CLI)
    assert result.exit_code == 2 and "--multiscale" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs: a whole number from 1"),
        (["--photometric", "2"], "--photometric: a number from 0 to 1, got 2.0"),
        (["--multiscale", "8,300"], "--multiscale: whole numbers from 32 to 4096, got 8"),
        (["--fpn-levels", "9"], "--fpn-levels: whole numbers from 1 to 4, got 9"),
        (["--nproc", "2", "--patience", "0"], "--patience: a whole number from 1"),
    ],
)
def test_bad_values_are_one_line_before_anything_starts(gunctl, tmp_path, args, message):
    """Option ranges live in TrainConfig.check, checked before torchrun starts processes."""
    result = gunctl("train", *args, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_min_size_alone_leaves_the_max_size_to_the_recipe(gunctl, tmp_path):
    """--min-size 500 is above the default --max-size (448), but the recipe raises its max to
    make room: the early check looks at each value alone, not at that relation."""
    result = gunctl("train", "--min-size", "500", "--out", tmp_path / "out")
    assert "above --max-size" not in result.stderr
    assert result.exit_code == 2 and "no manifest" in result.stderr.lower(), result.stderr


@pytest.mark.slow
def test_validate_all_and_other_data_and_predictions(trained, gunctl, tmp_path):
    out, _ = trained
    ckpt = out / "runs" / "first" / "last.pth"
    result = gunctl("validate", ckpt, "--out", out, "--split", "all", "--json")
    assert json.loads(result.stdout)["metrics"]["images"] == 16
    from gunctl.core.demo import generate

    generate(tmp_path / "other", count=5, seed=9)
    preds = tmp_path / "preds"
    result = gunctl(
        "validate", ckpt, "--data", tmp_path / "other", "--json", "--save-predictions", preds
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["images"] == 5
    assert len(list(preds.glob("*.png"))) == 5
    coco = json.loads((preds / "ground_truth.json").read_text())
    assert len(coco["images"]) == 5 and coco["categories"] == [{"id": 1, "name": "gun"}]
    assert isinstance(json.loads((preds / "predictions.json").read_text()), list)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign", "malicious", "other-model"])
def test_validate_refuses_bad_checkpoints(trained, gunctl, tmp_path, kind):
    import torch

    out, _ = trained
    path = tmp_path / "bad.pth"
    marker = tmp_path / "ran"
    if kind == "truncated":
        good = (out / "runs" / "first" / "last.pth").read_bytes()
        path.write_bytes(good[: len(good) // 3])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    elif kind == "malicious":
        path.write_bytes(_evil_pickle(marker))
    elif kind == "other-model":
        data = load_checkpoint(out / "runs" / "first" / "last.pth")
        data["config"]["model"]["name"] = "fasterrcnn_resnet50_fpn"
        torch.save(data, path)
    result = gunctl("validate", path, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in result.output
    assert not marker.exists()


def _evil_pickle(marker: Path) -> bytes:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"format": "gunctl-checkpoint", "x": Evil()})


@pytest.mark.slow
def test_tb_list_reads_back_the_numbers(trained, gunctl):
    out, _ = trained
    result = gunctl("tb", "--list", "--json", "--out", out)
    runs = json.loads(result.stdout)["runs"]
    assert [r["name"] for r in runs] == ["first"]
    stored = load_checkpoint(out / "runs" / "first" / "last.pth")
    assert runs[0]["best_map50"] == pytest.approx(stored["best_metric"])
    assert runs[0]["final_train_loss"] == pytest.approx(stored["metrics"]["train"]["loss"])
    assert runs[0]["epochs"] == 1 and runs[0]["model"] == "fasterrcnn_mobilenet_v3_large_320_fpn"
    table = gunctl("tb", "--list", "--out", out)
    assert "first" in table.stdout and "best mAP@.5" in table.stdout


@pytest.mark.slow
def test_tb_serves_the_runs_on_loopback(trained):
    out, _ = trained
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "gunctl", "tb", "--out", str(out), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        runs = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/data/runs", timeout=2
                ) as response:
                    runs = json.loads(response.read())
                    if runs:
                        break
            except OSError:
                time.sleep(0.5)
        assert runs == ["first"]
    finally:
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert f"http://127.0.0.1:{port}/" in stdout


@pytest.mark.slow
def test_train_resume_warns_about_ignored_options(trained, gunctl):
    out, _ = trained
    result = gunctl(
        "train", "--resume", "first", "--epochs", "2", "--lr", "5", "--out", out, *TINY_CLI[-4:-2]
    )
    assert result.exit_code == 0, result.output
    assert "--lr, --batch-size: ignored with --resume" in result.stderr
    assert load_checkpoint(out / "runs" / "first" / "last.pth")["epoch"] == 2


@pytest.mark.slow
def test_train_refuses_an_existing_run_and_a_locked_run(trained, gunctl):
    from gunctl.core.runlock import RunLock

    out, _ = trained
    result = gunctl("train", "--epochs", "1", "--out", out, "--run-name", "first", *TINY_CLI)
    assert result.exit_code == 2 and "--resume first" in result.stderr
    with RunLock(out / "runs" / "busy"):
        result = gunctl("train", "--epochs", "1", "--out", out, "--run-name", "busy", *TINY_CLI)
    assert result.exit_code == 2 and "run in use by pid" in result.stderr


def test_train_without_data(gunctl, tmp_path):
    result = gunctl("train", "--out", tmp_path / "nothing", *TINY_CLI)
    assert result.exit_code == 2
    assert "gunctl ingest" in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_diverging_training_exits_3_with_advice(trained, gunctl):
    out, _ = trained
    result = gunctl(
        "train",
        "--epochs",
        "2",
        "--out",
        out,
        "--run-name",
        "boom",
        *TINY_CLI[:-2],
        "--lr",
        "1e12",
        "--lr-schedule",
        "constant",
        "--warmup-steps",
        "0",
    )
    assert result.exit_code == 3, result.output
    assert "non-finite" in result.stderr and "lower --lr" in result.stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(trained):
    out, _ = trained
    process, last = start_long_training(out, "stopped")
    time.sleep(1.0)  # into the second epoch
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    checkpoint = load_checkpoint(last)
    assert checkpoint["interrupted"] is True and checkpoint["epoch"] >= 1
    done = checkpoint["epoch"]
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunctl",
            "train",
            "--resume",
            "stopped",
            "--epochs",
            str(done + 1),
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(last)
    assert final["epoch"] == done + 1 and final["interrupted"] is False
