"""Real torchrun, two CPU processes with gloo, on the demo data with a tiny model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_CLI, run_gunctl

from gunctl.core.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # torchrun with two processes trains twice


def torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def ddp_run(module_tmp):
    out = module_tmp / "artifacts"
    assert run_gunctl("ingest", "--source", "demo", "--count", "16", "--out", out).returncode == 0
    assert run_gunctl("split", "--out", out).returncode == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            *torchrun(),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "gunctl",
            "train",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--run-name",
            "ddp",
            *TINY_CLI,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    return out, result


def test_torchrun_trains_one_run_with_identical_ranks(ddp_run):
    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in result.stderr
    assert result.stdout.count("epoch 2/2") == 1  # rank 0 alone reports
    assert "batch 8 (4 per process x 2 processes)" in result.stdout
    assert [p.name for p in (out / "runs").iterdir()] == ["ddp"]
    assert sorted(p.name for p in (out / "runs" / "ddp").glob("*.pth")) == ["best.pth", "last.pth"]
    checkpoint = load_checkpoint(out / "runs" / "ddp" / "last.pth")
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 2
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # DDP unwrapped


def test_validate_agrees_with_the_metrics_of_training(ddp_run):
    out, _ = ddp_run
    checkpoint = load_checkpoint(out / "runs" / "ddp" / "last.pth")
    trained = checkpoint["metrics"]["val"]
    result = run_gunctl(
        "validate",
        out / "runs" / "ddp" / "last.pth",
        "--out",
        out,
        "--json",
        "--batch-size",
        "4",
        "--runtime",
        "torch",  # training validated in torch; the default (auto) may pick onnxruntime
    )
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)["metrics"]
    assert scored["images"] == trained["images"] == 3  # the whole val set, once
    for key in ("map", "map_50", "map_75", "mar_100", "loss", "loss_classifier"):
        # the same images and model; sums of losses in another order differ in the 6th digit
        assert scored[key] == pytest.approx(trained[key], rel=1e-5, abs=1e-6), key


def test_nproc_shortcut_resumes_under_torchrun(ddp_run, tmp_path):
    out, _ = ddp_run
    copy = tmp_path / "artifacts"
    shutil.copytree(out, copy, symlinks=True)
    result = run_gunctl(
        "train", "--nproc", "2", "--resume", "ddp", "--epochs", "3", "--out", copy, "--workers", "0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2" in result.stderr
    checkpoint = load_checkpoint(copy / "runs" / "ddp" / "last.pth")
    assert checkpoint["epoch"] == 3 and [r["epoch"] for r in checkpoint["history"]] == [1, 2, 3]
