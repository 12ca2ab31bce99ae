"""Recipes: which one is chosen, what it sets, and that explicit options win."""

import dataclasses

import pytest
import torch

from gunctl.config import ModelConfig, TrainConfig
from gunctl.core import recipes
from gunctl.errors import UsageError


def test_plain_is_the_config_unchanged():
    config = TrainConfig(recipe="plain")
    assert recipes.resolve(config) == config


def test_weights_none_chooses_scratch_and_explicit_options_win():
    config = TrainConfig(model=ModelConfig(weights="none"), lr=2e-3, explicit=("lr",))
    resolved = recipes.resolve(config)
    assert resolved.recipe == "scratch"
    assert resolved.lr == 2e-3  # the user's
    assert resolved.optimizer == recipes.SCRATCH["optimizer"] and resolved.ema and resolved.mosaic
    assert resolved.model.name == "fasterrcnn_resnet18_fpn" and resolved.model.norm == "gn"
    assert (resolved.model.min_size, resolved.model.max_size) == (192, 336)
    assert resolved.model.train_sizes == (144, 160, 224, 240)
    assert resolved.model.fpn_levels == (2, 3, 4)
    assert (resolved.model.fpn_channels, resolved.model.box_head_dim) == (128, 512)


def test_a_users_min_size_keeps_room_for_wide_images():
    config = TrainConfig(
        model=ModelConfig(weights="none", min_size=400), explicit=("model.min_size",)
    )
    resolved = recipes.resolve(config)
    assert (resolved.model.min_size, resolved.model.max_size) == (400, 700)
    assert resolved.model.train_sizes == (304, 352, 448, 496)  # around the user's size
    both = dataclasses.replace(
        config,
        model=ModelConfig(weights="none", min_size=300, max_size=320),
        explicit=("model.min_size", "model.max_size"),
    )
    assert recipes.resolve(both).model.max_size == 320  # both given: the user's


def test_coco_or_a_path_chooses_finetune():
    for weights in ("coco", "imagenet"):
        resolved = recipes.resolve(TrainConfig(model=ModelConfig(weights=weights)))
        assert resolved.recipe == "finetune" and resolved.model.name == "fasterrcnn_resnet50_fpn"
        assert resolved.model.norm == "default" and resolved.mosaic == 0


def test_auto_without_coco_weights_trains_from_scratch(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("gunctl.core.model.coco_weights_cached", lambda name: False)
    with caplog.at_level("WARNING", logger="gunctl"):
        resolved = recipes.resolve(TrainConfig())
    assert resolved.recipe == "scratch" and resolved.model.weights == "none"
    assert "scratch recipe" in caplog.text and "--recipe plain" in caplog.text
    monkeypatch.setattr("gunctl.core.model.coco_weights_cached", lambda name: True)
    cached = recipes.resolve(TrainConfig())
    assert cached.recipe == "finetune" and cached.model.weights == "coco"


def test_norm_and_anchors_only_for_resnet_fpn_models():
    config = TrainConfig(
        recipe="scratch",
        model=ModelConfig(name="fasterrcnn_mobilenet_v3_large_320_fpn", weights="none"),
        explicit=("model.name",),
    )
    resolved = recipes.resolve(config)
    assert resolved.model.norm == "default" and not resolved.fit_anchors and resolved.ema
    assert resolved.model.fpn_levels == ()


def test_bad_recipe_and_minutes_with_epochs_are_usage_errors():
    with pytest.raises(UsageError, match="--recipe"):
        recipes.resolve(TrainConfig(recipe="fast"))
    with pytest.raises(UsageError, match="--minutes"):
        recipes.resolve(TrainConfig(minutes=5, explicit=("epochs",)))
    with pytest.raises(UsageError, match="--minutes: a number above 0"):
        TrainConfig(minutes=0).check()  # the rule's home, which fit applies before anything


def test_fitted_anchors_follow_the_boxes():
    boxes = [(torch.tensor([[0.0, 0.0, s, s * 0.6]]), (180, 280)) for s in range(20, 180, 10)]
    config = recipes.fit_anchors(TrainConfig(fit_anchors=True), boxes)
    sizes, ratios = config.model.anchor_sizes, config.model.aspect_ratios
    assert len(sizes) == 5 and list(sizes) == sorted(set(sizes))
    scale = 256 / 180
    assert sizes[0] >= 20 * 0.6**0.5 * scale - 1 and sizes[-1] <= 170 * 0.6**0.5 * scale + 1
    assert all(r == pytest.approx(0.6, abs=0.01) for r in ratios)
    few = recipes.fit_anchors(TrainConfig(fit_anchors=True), boxes[:2])
    assert not few.fit_anchors and few.model.anchor_sizes == ()
    assert dataclasses.replace(config, fit_anchors=True) == config


def test_finetuning_a_checkpoint_takes_its_architecture(tmp_path):
    from gunctl.config import to_dict
    from gunctl.core.checkpoint import save_checkpoint

    trained = ModelConfig(
        name="fasterrcnn_resnet18_fpn",
        norm="gn",
        anchor_sizes=(1, 2, 3, 4),
        fpn_levels=(2, 3, 4),
        fpn_channels=64,
        box_head_dim=128,
    )
    path = tmp_path / "scratch.pth"
    payload = {"model": {}, "epoch": 1, "class_names": ["background", "gun"]}
    save_checkpoint(path, {**payload, "config": {"model": to_dict(trained)}})
    resolved = recipes.resolve(TrainConfig(model=ModelConfig(weights=str(path))))
    assert resolved.recipe == "finetune"
    assert resolved.model.name == "fasterrcnn_resnet18_fpn" and resolved.model.norm == "gn"
    assert resolved.model.anchor_sizes == (1, 2, 3, 4)
    assert resolved.model.fpn_levels == (2, 3, 4)  # the checkpoint's shape, so its weights load
    assert (resolved.model.fpn_channels, resolved.model.box_head_dim) == (64, 128)


def test_a_scratch_checkpoint_fine_tunes_with_its_own_shape(tmp_path):
    """The scratch recipe's model (no stride-4 level, narrower FPN and box head) loads back
    as the starting point of a finetune run."""
    from gunctl.config import to_dict
    from gunctl.core.checkpoint import save_checkpoint
    from gunctl.core.model import build_model

    scratch = recipes.resolve(TrainConfig(model=ModelConfig(weights="none")))
    model = build_model(scratch.model).model
    path = tmp_path / "scratch.pth"
    payload = {"model": model.state_dict(), "epoch": 1, "class_names": ["background", "gun"]}
    save_checkpoint(path, {**payload, "config": to_dict(scratch)})
    again = recipes.resolve(TrainConfig(model=ModelConfig(weights=str(path))))
    loaded = build_model(again.model).model
    assert loaded.backbone.out_channels == scratch.model.fpn_channels
    first = next(iter(model.state_dict()))
    assert torch.equal(loaded.state_dict()[first], model.state_dict()[first])
