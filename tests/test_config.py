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
        (TrainConfig(lr=0.0), "--lr: a number above 0, got 0.0"),
        (TrainConfig(lr=float("nan")), "--lr: a number above 0, got nan"),
        (TrainConfig(lr=float("inf")), "--lr: a number above 0, got inf"),
        (TrainConfig(lr="fast"), "--lr: a number above 0, got 'fast'"),
        (TrainConfig(minutes=-5.0), "--minutes: a number above 0"),
        (TrainConfig(zoom_out=7.0), "--zoom-out: a number from 0 to 1, got 7.0"),
        (TrainConfig(photometric=-1.0), "--photometric: a number from 0 to 1"),
        (TrainConfig(mosaic=float("nan")), "--mosaic: a number from 0 to 1"),
        (TrainConfig(ema_decay=1.0), "--ema-decay: a number from 0 below 1"),
        (TrainConfig(val_every=0), "--val-every: a whole number from 1"),
        (TrainConfig(patience=-1), "--patience: a whole number from 1"),
        (TrainConfig(save_period=0), "--save-period: a whole number from 1"),
        (TrainConfig(batch_size=10**9), "--batch-size: a whole number from 1 to 4096"),
        (TrainConfig(epochs=2.5), "--epochs: a whole number from 1"),
        (TrainConfig(grad_clip=float("nan")), "grad_clip: a number above 0"),
        (TrainConfig(weight_decay=float("inf")), "--weight-decay: a number from 0"),
        (TrainConfig(hflip="no"), "--hflip: true or false, got 'no'"),
        (
            TrainConfig(model=ModelConfig(num_classes=1)),
            "classes \\(with the background\\): a whole number from 2 to 1001, got 1",
        ),
        (TrainConfig(model=ModelConfig(min_size=16)), "--min-size: a whole number from 32 to 4096"),
        (TrainConfig(model=ModelConfig(train_sizes=(8000,))), "--multiscale: whole numbers"),
        (TrainConfig(model=ModelConfig(fpn_levels=(3, 2))), "--fpn-levels: ResNet stages in"),
        (TrainConfig(device="tpu"), "--device tpu: use auto, cpu, cuda or cuda:N"),
        (TrainConfig(model=ModelConfig(name="yolo")), "--model yolo: choose one of"),
        (TrainConfig(model=ModelConfig(min_size=500)), "--min-size 500 is above --max-size 448"),
        (SplitConfig(val_fraction=1.0), "--val-fraction: a number above 0 below 1"),
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
