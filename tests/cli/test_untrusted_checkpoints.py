"""Untrusted checkpoints: a pickle never runs, every field is checked before use (one line
naming the file and the field), a stored name never becomes a path, and a checkpoint from
elsewhere never overwrites a run of the same name."""

import os
from pathlib import Path

import pytest
from helpers import TINY_CLI, run_gunctl
from untrusted import (
    assert_clean_failure,
    assert_one_line,
    crafted_checkpoint,
    evil_file,
    snapshot,
)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate", "resume", "weights"])
def test_malicious_checkpoints_never_run(demo_out, tmp_path, command):
    marker = tmp_path / "pwned"
    evil = evil_file(tmp_path / "evil.pth", marker)
    args = {
        "validate": ["validate", evil, "--out", demo_out],
        "resume": ["train", "--resume", evil, "--out", demo_out, *TINY_CLI],
        "weights": [
            "train",
            "--out",
            demo_out,
            "--run-name",
            "w",
            *TINY_CLI[:2],
            "--weights",
            evil,
            *TINY_CLI[4:],
        ],
    }[command]
    result = run_gunctl(*args)
    assert_clean_failure(result, 2, "unsafe to load")
    assert not marker.exists()


@pytest.mark.slow  # spawns gunctl processes that import torch
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/gunctl-abs-run", ".hidden"])
def test_a_checkpoints_run_name_never_becomes_a_path(demo_copy, tmp_path, name):
    evil = crafted_checkpoint(tmp_path / "sibling" / "evil.pth", run_name=name)
    before = snapshot(tmp_path, skip=(demo_copy,))
    result = run_gunctl("train", "--resume", evil, "--epochs", "2", "--out", demo_copy)
    assert_one_line(result, 2, "evil.pth", "run_name")
    assert snapshot(tmp_path, skip=(demo_copy,)) == before
    assert not Path("/tmp/gunctl-abs-run").exists()


@pytest.mark.slow  # spawns gunctl processes that import torch
def test_resuming_a_foreign_checkpoint_never_overwrites_a_run(demo_copy, tmp_path):
    ours = crafted_checkpoint(demo_copy / "runs" / "r" / "last.pth", run_name="r", run_id="a" * 32)
    foreign = crafted_checkpoint(tmp_path / "sibling" / "r.pth", run_name="r", run_id="b" * 32)
    before = snapshot(tmp_path)
    result = run_gunctl("train", "--resume", foreign, "--epochs", "2", "--out", demo_copy)
    assert_one_line(result, 2, str(ours.parent), "holds another run", "--out")
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # spawns gunctl processes that import torch
@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"epoch": "one"}, "'epoch'"),
        ({"class_names": "gun"}, "'class_names'"),
        ({"history": [{"epoch": 1}]}, "history[0]"),
        ({"config": {"model": "fasterrcnn"}}, "'model'"),
        ({"config": {"lr": "fast", "model": {"name": "x"}}}, "'lr'"),
        ({"config": {"seed": 2**70, "model": {"name": "x"}}}, "config.seed: --seed"),
        (
            {"config": {"model": {"name": "fasterrcnn_resnet18_fpn", "min_size": 0}}},
            "config.model.min_size: --min-size",
        ),
        ({"model": {"w": "not a tensor"}}, "'model'"),
        ({"rng": {"torch": [1, 2]}}, "rng"),
        ({"scheduler": {"last_epoch": "x"}}, "scheduler: 'last_epoch'"),
    ],
    ids=[
        "epoch",
        "classes",
        "history",
        "config-model",
        "lr",
        "seed",
        "min-size",
        "weights",
        "rng",
        "scheduler",
    ],
)
def test_tampered_checkpoint_fields_are_one_line(demo_copy, tmp_path, fields, fragment):
    path = crafted_checkpoint(tmp_path / "sibling" / "bad.pth", **fields)
    before = snapshot(tmp_path)
    commands = [["validate", path, "--artifacts", demo_copy]]
    if fragment in ("'epoch'", "'lr'", "scheduler: 'last_epoch'"):  # the same checks; fewer runs
        commands.append(["train", "--resume", path, "--epochs", "3", "--out", demo_copy])
    for args in commands:
        assert_one_line(run_gunctl(*args), 2, "bad.pth", fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("num_classes", 10**9, "classes (with the background): a whole number from 2 to 1001"),
        ("min_size", 10**6, "--min-size: a whole number from 32 to 4096"),
        ("max_size", 10**6, "--max-size: a whole number from 32 to 4096"),
        ("train_sizes", 5, "--multiscale: a list of whole numbers"),
        ("train_sizes", ["a"], "--multiscale: whole numbers"),
        ("fpn_levels", [4, 3, 2], "--fpn-levels: ResNet stages in rising order"),
        ("fpn_levels", 3, "--fpn-levels: a list"),
        ("anchor_sizes", [0, 1, 2, 3, 4], "anchor sizes: whole numbers from 1"),
        ("anchor_sizes", 5, "anchor sizes: a list"),
        ("aspect_ratios", ["x"], "aspect ratios: numbers from 0.05 to 20"),
        ("aspect_ratios", [1e30], "aspect ratios"),
    ],
)
def test_checkpoint_model_values_that_size_memory_are_refused(
    gunctl, tmp_path, field, value, fragment
):
    """A checkpoint's model configuration builds the model: a value that would allocate
    terabytes, or that the builder cannot take, is a one-line error before anything is built."""
    from helpers import tiny_config

    from gunctl.config import Layout, to_dict

    config = to_dict(tiny_config(Layout(tmp_path)))
    config.pop("layout")
    config["model"][field] = value
    path = crafted_checkpoint(tmp_path / "bad.pth", config=config)
    result = gunctl("validate", path, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "bad.pth" in result.stderr and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("zoom_out", 7.0, "--zoom-out: a number from 0 to 1, got 7.0"),
        ("photometric", -1.0, "--photometric: a number from 0 to 1"),
        ("val_every", 0, "--val-every: a whole number from 1"),
        ("batch_size", 10**9, "--batch-size: a whole number from 1 to 4096"),
        ("ema_decay", 1.5, "--ema-decay: a number from 0 below 1, got 1.5"),
        ("minutes", -5.0, "--minutes: a number above 0, got -5.0"),
        ("mosaic", 2.0, "--mosaic: a number from 0 to 1"),
        ("hflip", "no", "'hflip' must be true or false"),  # the checkpoint's schema: types
    ],
)
def test_resuming_a_checkpoint_with_bad_options_is_one_line(
    gunctl, tmp_path, field, value, fragment
):
    """--resume takes the run's options from its checkpoint: they pass the command line's rules
    (a zoom-out probability of 7 crashed in torchvision; 0 for --val-every divided by it)."""
    import torch
    from helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "bad.pth", with_optimizer=True)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"][field] = value
    torch.save(checkpoint, path)
    before = snapshot(tmp_path)
    result = gunctl("train", "--resume", path, "--epochs", "3", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "bad.pth" in result.stderr and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # spawns gunctl processes that import torch
def test_foreign_checkpoints_in_tb_list_are_skipped(tmp_path):
    import torch

    runs = tmp_path / "out" / "runs"
    (runs / "plain").mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, runs / "plain" / "last.pth")
    crafted_checkpoint(runs / "typed" / "last.pth", config={"model": "fasterrcnn"})
    (runs / "fifo").mkdir()
    os.mkfifo(runs / "fifo" / "last.pth")
    result = run_gunctl("tb", "--list", "--out", tmp_path / "out", timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for name in ("plain", "typed", "fifo"):
        assert f"runs/{name}/last.pth" in result.stderr
