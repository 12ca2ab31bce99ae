"""Interrupted and concurrent commands: kill -9 while a checkpoint is written or while raw/ is
rebuilt loses nothing, a resume goes on; raw/ and runs are locked against a second writer."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_CLI, run_gunctl, share_data, start_long_training
from untrusted import (
    assert_clean_failure,
    assert_one_line,
    snapshot,
)

from gunctl.core.checkpoint import load_checkpoint


@pytest.mark.slow
def test_kill_9_mid_epoch_keeps_the_last_checkpoint_and_resume_goes_on(demo_out, tmp_path):
    out = share_data(tmp_path / "artifacts", demo_out)
    process, last = start_long_training(out, "killed")

    # --epochs above any count the first run can have reached: the lock is the only refusal
    second = run_gunctl(
        "train",
        "--epochs",
        "1000",
        "--out",
        out,
        "--run-name",
        "killed",
        "--resume",
        "killed",
        *TINY_CLI,
    )
    assert_clean_failure(second, 2, "run in use by pid")  # a second writer is refused

    # The moment to interrupt: a later epoch's checkpoint being written (its temporary file
    # exists), where a non-atomic write would leave a torn last.pth.
    writing = _wait_for(lambda: next(last.parent.glob(f".{last.name}.*.tmp"), None), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert writing is not None, "the run ended before a second checkpoint write was seen"
    checkpoint = load_checkpoint(last)  # intact: atomic writes
    done = checkpoint["epoch"]
    assert done >= 1 and checkpoint["interrupted"] is False
    resumed = run_gunctl(
        "train", "--resume", "killed", "--epochs", done + 1, "--out", out, "--quiet"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(last)["epoch"] == done + 1
    assert not list((out / "runs" / "killed").glob(".*.tmp"))  # half-written files cleared


def test_raw_is_locked_while_read_and_while_replaced(demo_copy, tmp_path):
    from gunctl.config import Layout
    from gunctl.core.rawlock import RawLock

    before = snapshot(tmp_path)
    with RawLock(Layout(demo_copy), exclusive=False):  # as a running train or validate holds it
        result = run_gunctl(
            "ingest", "--source", "demo", "--count", "3", "--out", demo_copy, "--force"
        )
        assert_one_line(result, 2, str(demo_copy / "raw"), "in use by another gunctl command")
    with RawLock(Layout(demo_copy), exclusive=True, command="gunctl ingest"):  # as an ingest
        result = run_gunctl("split", "--out", demo_copy)
        assert_one_line(result, 2, str(demo_copy / "raw"), "being replaced by gunctl ingest")
        second = run_gunctl(
            "ingest", "--source", "demo", "--count", "3", "--out", demo_copy, "--force"
        )
        assert_one_line(second, 2, "in use")
    assert snapshot(tmp_path) == before


def test_an_interrupted_swap_never_loses_the_old_raw(demo_copy, tmp_path):
    manifest = (demo_copy / "raw" / "manifest.json").read_bytes()
    # The state that kill -9 between the two renames of `ingest --force` leaves behind:
    os.rename(demo_copy / "raw", demo_copy / ".raw-old")
    (demo_copy / ".raw-staging-999999-x" / "Images").mkdir(parents=True)
    failing = run_gunctl("ingest", "--source", tmp_path / "missing", "--out", demo_copy, "--force")
    assert_one_line(failing, 2, "missing")
    assert "restored" in failing.stderr
    assert (demo_copy / "raw" / "manifest.json").read_bytes() == manifest
    assert not (demo_copy / ".raw-old").exists()
    assert not (demo_copy / ".raw-staging-999999-x").exists()
    os.rename(demo_copy / "raw", demo_copy / ".raw-old")  # readers restore it too
    assert run_gunctl("split", "--out", demo_copy).returncode == 0
    assert (demo_copy / "raw" / "manifest.json").read_bytes() == manifest


@pytest.mark.slow
@pytest.mark.parametrize("staged", [1, 100, 250])
def test_kill_9_during_ingest_force_never_loses_raw(tmp_path, sample_data, staged):
    # The moment to interrupt: ingest --force of the 300-image sample has staged at least
    # ``staged`` images of the new tree beside the old raw/ (seen in its staging folder).
    out = tmp_path / "out"
    assert run_gunctl("ingest", "--source", "demo", "--count", "5", "--out", out).returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "gunctl", "ingest", "--source", sample_data, "--out", out]
        + ["--force", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen = _wait_for(lambda: _staged_images(out) >= staged or None, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert seen, f"ingest ended before {staged} images were staged"
    assert (out / "raw").exists() or (out / ".raw-old").exists()
    result = run_gunctl("split", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    images = json.loads(result.stdout)
    assert images["train"]["images"] + images["val"]["images"] == 5  # the old tree, whole


def _staged_images(out: Path) -> int:
    folder = next(out.glob(".raw-staging-*/Images"), None)
    try:
        return len(os.listdir(folder)) if folder else 0
    except FileNotFoundError:  # renamed into place meanwhile
        return 0


def _wait_for(condition, process, timeout: float = 180.0):
    """Poll ``condition()`` every 2 ms while ``process`` runs; its first true value, or None
    when the process ended or the time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = condition()
        if found:
            return found
        time.sleep(0.002)
    return None
