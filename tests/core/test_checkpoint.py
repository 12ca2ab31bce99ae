import pickle

import pytest
import torch

from gunctl.core.checkpoint import load_checkpoint, save_checkpoint
from gunctl.errors import CheckpointError


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def minimal():
    return {
        "model": {"w": torch.ones(2)},
        "config": {"model": {"name": "fasterrcnn_resnet18_fpn"}},
        "epoch": 1,
        "class_names": ["background", "gun"],
    }


def test_round_trip_with_versions(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, minimal())
    data = load_checkpoint(path)
    assert torch.equal(data["model"]["w"], torch.ones(2))
    assert data["format"] == "gunctl-checkpoint" and data["schema"] == 1
    assert data["versions"]["torch"] == torch.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temporary file left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    save_checkpoint(path, minimal())
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(Exception, match="No space left"):
        save_checkpoint(path, minimal())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such checkpoint"),
        (lambda p: p.write_bytes(b""), "not a checkpoint: the file is empty"),
        (lambda p: p.write_bytes(b"hello world, not a checkpoint"), r"not a checkpoint \(a text"),
        (lambda p: torch.save({"w": torch.ones(1)}, p), "not a gunctl checkpoint"),
        (
            lambda p: torch.save({**minimal(), "format": "gunctl-checkpoint", "schema": 99}, p),
            "newer",
        ),
    ],
    ids=["missing", "empty", "garbage", "foreign", "future"],
)
def test_bad_files_are_one_line_errors(tmp_path, make, message):
    path = tmp_path / "c.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_weights_only_checkpoints_load_but_do_not_resume(tmp_path):
    from gunctl.core.checkpoint import require_full

    path = tmp_path / "best.pth"
    save_checkpoint(path, minimal(), kind="weights")
    loaded = load_checkpoint(path)
    assert loaded["kind"] == "weights"
    with pytest.raises(CheckpointError, match="weights-only checkpoint cannot resume"):
        require_full(path, loaded)
    save_checkpoint(path, minimal())
    require_full(path, load_checkpoint(path))  # full: fine


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(path, minimal())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt|corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {**minimal(), "format": "gunctl-checkpoint", "schema": 1, "x": Evil(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="unsafe|corrupt"):
        load_checkpoint(path)
    assert not marker.exists()
