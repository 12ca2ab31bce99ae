"""config.py is the one home of option checks and of what --resume may change."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gunctl.config import (
    RESUMABLE_OPTIONS,
    Layout,
    ModelConfig,
    SplitConfig,
    TrainConfig,
    ValidateConfig,
    resumed_config,
)
from gunctl.errors import UsageError


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TrainConfig(optimizer="lion"), "--optimizer lion: choose one of adam, sgd, adamw"),
        (TrainConfig(lr_schedule="linear"), "--lr-schedule linear: choose one of constant"),
        (TrainConfig(cache="disk"), "--cache disk: choose one of none, ram"),
        (TrainConfig(lr=0.0), "--lr must be a positive number"),
        (TrainConfig(lr=float("nan")), "--lr must be a positive number"),
        (TrainConfig(device="tpu"), "--device tpu: use auto, cpu, cuda or cuda:N"),
        (TrainConfig(model=ModelConfig(name="yolo")), "--model yolo: choose one of"),
        (TrainConfig(model=ModelConfig(min_size=500)), "--min-size 500 is above --max-size 448"),
        (SplitConfig(val_fraction=1.0), "--val-fraction must be between 0 and 1"),
        (ValidateConfig(part="test"), "--split test: choose one of train, val, all"),
        (ValidateConfig(data=Path("x"), part="all"), "--data scores a whole folder"),
    ],
)
def test_bad_options_are_one_usage_error(config, message):
    with pytest.raises(UsageError, match=message.replace("+", r"\+")):
        config.check()


def test_defaults_pass_their_checks():
    for config in (TrainConfig(), SplitConfig(), ValidateConfig(), TrainConfig(device="cuda:1")):
        config.check()


def test_resume_takes_only_the_resumable_options_from_the_request():
    stored = TrainConfig(epochs=2, lr=1e-3, optimizer="sgd", workers=4, seed=7)
    requested = TrainConfig(
        epochs=5, lr=9.0, optimizer="adam", workers=0, seed=1, resume="r", layout=Layout(Path("o"))
    )
    config = resumed_config(stored, requested)
    assert (config.lr, config.optimizer, config.seed) == (1e-3, "sgd", 7)
    for name in RESUMABLE_OPTIONS:
        assert getattr(config, name) == getattr(requested, name)
    assert config.layout == requested.layout
    assert {f.name for f in dataclasses.fields(TrainConfig)} >= set(RESUMABLE_OPTIONS)


def test_layout_owns_the_file_names():
    layout = Layout(Path("out"))
    assert layout.last_checkpoint("r") == Path("out/runs/r/last.pth")
    assert layout.best_checkpoint("r") == Path("out/runs/r/best.pth")
    assert layout.best_model == Path("out/models/fasterrcnn.pth")
    assert ValidateConfig().checkpoint == Layout().best_model
