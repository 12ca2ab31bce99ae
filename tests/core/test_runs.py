"""Run listing for `gunctl tb --list`: which folders count, what is read back, sorting."""

from __future__ import annotations

import pytest
import torch

from gunctl.config import Layout
from gunctl.core.checkpoint import save_checkpoint
from gunctl.core.runs import list_runs
from gunctl.errors import UsageError


def write_run(runs, name: str, epochs: int, loss: float, map50: float) -> None:
    from torch.utils.tensorboard import SummaryWriter

    folder = runs / name
    with SummaryWriter(log_dir=str(folder)) as writer:
        for epoch in range(1, epochs + 1):
            writer.add_scalar("train/loss", loss + (epochs - epoch), epoch)
            writer.add_scalar("val/map_50", map50 - 0.1 * (epochs - epoch), epoch)
    checkpoint = {
        "model": {"w": torch.zeros(1)},
        "config": {"model": {"name": "fasterrcnn_resnet18_fpn"}},
        "epoch": epochs,
        "class_names": ["background", "gun"],
    }
    save_checkpoint(folder / Layout.LAST, checkpoint)


def test_lists_runs_with_their_numbers_and_sorts(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "a", epochs=2, loss=0.5, map50=0.3)
    write_run(runs, "b", epochs=3, loss=0.2, map50=0.6)
    (runs / "empty").mkdir()  # neither events nor a checkpoint: not a run
    listed = list_runs(runs, sort="name")
    assert [r.name for r in listed] == ["a", "b"]
    a = listed[0]
    expected = ("fasterrcnn_resnet18_fpn", 2, runs / "a" / Layout.LAST)
    assert (a.model, a.epochs, a.checkpoint) == expected
    assert a.final_train_loss == pytest.approx(0.5) and a.best_map50 == pytest.approx(0.3)
    assert [r.name for r in list_runs(runs, sort="map50")] == ["b", "a"]
    assert [r.name for r in list_runs(runs, sort="loss")] == ["b", "a"]
    assert [r.name for r in list_runs(runs, sort="epochs")] == ["b", "a"]
    assert a.as_dict()["checkpoint"] == str(runs / "a" / Layout.LAST)


def test_a_corrupt_checkpoint_is_a_warning_not_a_failure(tmp_path, caplog):
    runs = tmp_path / "runs"
    (runs / "broken").mkdir(parents=True)
    (runs / "broken" / Layout.LAST).write_bytes(b"not a checkpoint")
    [run] = list_runs(runs)
    assert run.model is None and run.epochs is None
    assert "broken/last.pth: not a checkpoint" in caplog.text


def test_missing_folder_and_bad_sort(tmp_path):
    assert list_runs(tmp_path / "nowhere") == []
    with pytest.raises(UsageError, match="--sort size: choose one of name, start"):
        list_runs(tmp_path, sort="size")
