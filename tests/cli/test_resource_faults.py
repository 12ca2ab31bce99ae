"""Out of disk and out of memory: refused before training where it can be known, else one line
that says what to do, exit 2 or 3, and the last good checkpoint kept (resumable)."""

import pytest
from helpers import TINY_CLI, run_gunctl, share_data
from untrusted import (
    assert_clean_failure,
)

from gunctl.core.checkpoint import load_checkpoint


@pytest.mark.slow
def test_unwritable_out_is_refused_before_training(demo_out, tmp_path):
    out = share_data(tmp_path / "artifacts", demo_out)
    (out / "runs").write_text("a file where the runs folder should be")  # cannot hold runs
    result = run_gunctl("train", "--out", out, "--run-name", "x", *TINY_CLI)
    assert_clean_failure(result, 2, "cannot write")
    assert (out / "runs").read_text().startswith("a file")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    result = run_gunctl("ingest", "--source", "demo", "--out", blocker / "artifacts")
    assert_clean_failure(result, 2, "cannot write")


def test_disk_full_is_refused_before_training(demo_out, gunctl, monkeypatch, tmp_path):
    import shutil

    out = share_data(tmp_path / "artifacts", demo_out)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024 * 1024))
    result = gunctl("train", "--out", out, "--run-name", "full", *TINY_CLI)
    assert result.exit_code == 2
    assert "MiB free, checkpoints need about" in result.stderr
    assert not (out / "runs" / "full" / "last.pth").exists()


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_one(demo_out, gunctl, monkeypatch, tmp_path):
    import torch

    out = share_data(tmp_path / "artifacts", demo_out)
    real_save, calls = torch.save, []

    def failing_second_save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            handle.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_save)
    result = gunctl("train", "--epochs", "3", "--out", out, "--run-name", "f", *TINY_CLI)
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr and "last.pth" in result.stderr
    monkeypatch.setattr(torch, "save", real_save)
    checkpoint = load_checkpoint(out / "runs" / "f" / "last.pth")
    assert checkpoint["epoch"] == 1


@pytest.mark.slow
def test_out_of_memory_says_what_to_do_and_saves(demo_out, tmp_path):
    import torch
    from helpers import tiny_config

    from gunctl.config import Layout
    from gunctl.core.callbacks import Callback
    from gunctl.core.trainer import fit
    from gunctl.errors import TrainingError

    class OutOfMemory(Callback):
        def on_step_end(self, state, step):
            if state.epoch == 1 and step.batch == 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    out = share_data(tmp_path / "artifacts", demo_out)
    with pytest.raises(
        TrainingError, match="out of GPU memory at epoch 2.*--batch-size.*--min-size"
    ):
        fit(tiny_config(Layout(out), epochs=3), [OutOfMemory()])
    checkpoint = load_checkpoint(out / "runs" / "tiny" / "last.pth")
    assert checkpoint["interrupted"] is True and checkpoint["epoch"] == 1


def test_cpu_out_of_memory_is_exit_3(demo_copy, gunctl, monkeypatch):
    import gunctl.core.trainer as trainer

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 9876543210 bytes."
        )

    monkeypatch.setattr(trainer, "train_one_epoch", out_of_memory)
    result = gunctl("train", "--out", demo_copy, "--run-name", "oom", *TINY_CLI)
    assert result.exit_code == 3, result.output
    assert "out of memory at epoch 1, batch 1" in result.stderr and "--batch-size" in result.stderr
    assert (demo_copy / "runs" / "oom" / "last.pth").exists()  # resumable
