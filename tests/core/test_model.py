import dataclasses

import pytest
import torch

from gunctl.config import ModelConfig
from gunctl.core.model import build_model, coco_weights_file
from gunctl.errors import UsageError

NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"


def test_none_builds_two_classes_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    built = build_model(ModelConfig(name=NAME, weights="none"))
    assert built.weights_origin == "none"
    assert built.model.roi_heads.box_predictor.cls_score.out_features == 2
    assert not (tmp_path / "hub").exists()


def test_auto_offline_falls_back_with_a_short_warning_and_no_network(tmp_path, monkeypatch, caplog):
    def no_network(*args, **kwargs):
        raise AssertionError("auto must not probe the network")

    import logging

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(logging.getLogger("gunctl"), "propagate", True)  # after CLI tests
    with caplog.at_level("INFO", logger="gunctl"):
        built = build_model(ModelConfig(name=NAME, weights="auto"))
    assert built.weights_origin.startswith("none (auto")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "training from scratch" in warnings[0]
    assert len("warning: " + warnings[0]) < 120  # one line on any terminal of 120 columns
    assert str(coco_weights_file(NAME)) in caplog.text  # the file's path, on its own line


def test_coco_from_a_prefilled_torch_cache(tmp_path, monkeypatch):
    """torchvision reads $TORCH_HOME/hub/checkpoints/<file> without touching the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    coco = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    with torch.no_grad():
        for param in coco.parameters():
            param.fill_(0.125)
    target = coco_weights_file(NAME)
    assert str(target).startswith(str(tmp_path))
    target.parent.mkdir(parents=True)
    torch.save(coco.state_dict(), target)
    for weights in ("coco", "auto"):
        built = build_model(ModelConfig(name=NAME, weights=weights))
        assert built.weights_origin == "coco"
        first = next(built.model.backbone.parameters())
        assert torch.all(first == 0.125)  # the cached file's weights, not random ones
        assert built.model.roi_heads.box_predictor.cls_score.out_features == 2


def test_imagenet_offline_is_a_clear_error(tmp_path, monkeypatch):
    from gunctl.errors import SourceError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SourceError, match="mobilenet_v3_large.*cannot download") as caught:
        build_model(ModelConfig(name=NAME, weights="imagenet"))
    assert f"put the file in {tmp_path}" in str(caught.value)  # where it goes, offline


def test_coco_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    from gunctl.errors import SourceError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SourceError, match="put the file in") as caught:
        build_model(ModelConfig(name=NAME, weights="coco"))
    assert str(coco_weights_file(NAME).parent) in str(caught.value)


def test_resnet18_fpn_with_groupnorm_and_fitted_anchors():
    config = ModelConfig(
        name="fasterrcnn_resnet18_fpn",
        weights="none",
        norm="gn",
        anchor_sizes=(40, 60, 80, 110, 170),
        aspect_ratios=(0.4, 0.7, 1.2),
        train_sizes=(192, 224),
    )
    model = build_model(config).model
    norms = {type(m).__name__ for m in model.backbone.modules()}
    assert "GroupNorm" in norms and "BatchNorm2d" not in norms
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.fpn.modules())
    assert model.rpn.anchor_generator.sizes == ((40,), (60,), (80,), (110,), (170,))
    assert model.rpn.head.cls_logits.out_channels == 3
    assert model.transform.min_size == (192, 224, 256)  # drawn in training, 256 in eval
    assert all(p.requires_grad for p in model.backbone.body.parameters())  # from scratch: all
    model.eval()
    with torch.no_grad():
        assert model([torch.rand(3, 60, 90)])[0]["boxes"].shape[1] == 4


def test_norm_choice_and_model_checks():
    bn = build_model(ModelConfig(name="fasterrcnn_resnet50_fpn", weights="none", norm="frozen_bn"))
    assert type(bn.model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    with pytest.raises(UsageError, match="--norm"):
        build_model(ModelConfig(name=NAME, weights="none", norm="gn"))
    with pytest.raises(UsageError, match="no COCO weights"):
        build_model(ModelConfig(name="fasterrcnn_resnet18_fpn", weights="coco"))
    with pytest.raises(UsageError, match="does not fit"):
        build_model(ModelConfig(name="fasterrcnn_resnet18_fpn", weights="imagenet", norm="gn"))


def test_fpn_without_the_stride_4_level():
    config = ModelConfig(
        name="fasterrcnn_resnet18_fpn", weights="none", norm="gn", fpn_levels=(2, 3, 4)
    )
    model = build_model(config).model
    assert model.rpn.anchor_generator.sizes == ((64,), (128,), (256,), (512,))
    model.eval()
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 64, 96))
        assert list(features) == ["0", "1", "2", "pool"]
        assert features["0"].shape[-2:] == (8, 12)  # stride 8
        assert model([torch.rand(3, 60, 90)])[0]["boxes"].shape[1] == 4
    with pytest.raises(UsageError, match="one per FPN level \\(4\\)"):
        build_model(dataclasses.replace(config, anchor_sizes=(1, 2, 3, 4, 5)))


def test_fpn_and_box_head_widths():
    config = ModelConfig(
        name="fasterrcnn_resnet18_fpn",
        weights="none",
        norm="gn",
        fpn_levels=(2, 3, 4),
        fpn_channels=64,
        box_head_dim=96,
    )
    model = build_model(config).model
    assert model.backbone.out_channels == 64
    assert all(block[0].out_channels == 64 for block in model.backbone.fpn.layer_blocks)
    assert model.rpn.head.conv[0][0].in_channels == 64
    assert model.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    assert model.roi_heads.box_head.fc7.out_features == 96
    assert model.roi_heads.box_predictor.cls_score.in_features == 96
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    model.eval()
    with torch.no_grad():
        assert model([torch.rand(3, 60, 90)])[0]["boxes"].shape[1] == 4
    for bad in ({"fpn_channels": 100}, {"fpn_channels": 0}, {"box_head_dim": 8}):
        with pytest.raises(UsageError, match="--fpn-channels|--box-head-dim"):
            build_model(dataclasses.replace(config, **bad))
    with pytest.raises(UsageError, match="--fpn-channels"):
        build_model(ModelConfig(name=NAME, weights="none", fpn_channels=128))


def test_box_head_width_for_a_mobilenet_and_refusals():
    """Every model with torchvision's two-layer box head takes --box-head-dim (MobileNet's
    12544x1024 layer holds most of its parameters); the v2's convolutional head and COCO
    weights (trained at 1024) refuse it."""
    default = build_model(ModelConfig(name=NAME, weights="none")).model
    model = build_model(ModelConfig(name=NAME, weights="none", box_head_dim=64)).model
    assert model.roi_heads.box_head.fc6.in_features == 256 * 7 * 7
    assert model.roi_heads.box_head.fc7.out_features == 64
    assert model.roi_heads.box_predictor.cls_score.in_features == 64
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 2 * 4
    size = sum(p.numel() for p in model.parameters())
    assert size < sum(p.numel() for p in default.parameters()) / 3
    model.eval()
    with torch.no_grad():
        assert model([torch.rand(3, 60, 90)])[0]["boxes"].shape[1] == 4
    with pytest.raises(UsageError, match="--box-head-dim: fasterrcnn_resnet50_fpn_v2"):
        build_model(ModelConfig(name="fasterrcnn_resnet50_fpn_v2", weights="none", box_head_dim=64))
    with pytest.raises(UsageError, match="do not fit COCO weights"):
        build_model(ModelConfig(name=NAME, weights="coco", box_head_dim=64))


def test_default_widths_build_torchvisions_resnet50_fpn_exactly():
    """gunctl's FPN builder replicates torchvision's (names, shapes, frozen layers), so that
    checkpoints of either load into the other."""
    import torchvision

    ours = build_model(ModelConfig(name="fasterrcnn_resnet50_fpn", weights="none", norm="bn"))
    theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2
    )
    shapes = {k: v.shape for k, v in ours.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    frozen = {n for n, p in ours.model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in theirs.named_parameters() if not p.requires_grad}


def test_a_checkpoint_of_other_classes_fine_tunes_with_a_new_predictor(tmp_path, caplog):
    """A one-class gun detector as the start of a three-class run (gun, knife, rifle): its
    weights load, and only the box predictor is new (as from COCO's 91 classes)."""
    import logging

    from helpers import tiny_checkpoint

    from gunctl.config import model_config_from_dict
    from gunctl.core.checkpoint import load_checkpoint

    path = tiny_checkpoint(tmp_path / "gun.pth")
    stored = load_checkpoint(path)
    config = model_config_from_dict(stored["config"]["model"])
    config = dataclasses.replace(config, weights=str(path), num_classes=4)
    monkey = logging.getLogger("gunctl")
    monkey.propagate, before = True, monkey.propagate  # the CLI tests turn it off
    try:
        with caplog.at_level("WARNING", logger="gunctl"):
            model = build_model(config).model
    finally:
        monkey.propagate = before
    assert "2 classes, the data 4" in caplog.text and "predictor is replaced" in caplog.text
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4 * 4
    kept = {k: v for k, v in model.state_dict().items() if "box_predictor" not in k}
    assert kept and all(torch.equal(v, stored["model"][k]) for k, v in kept.items())
    same = build_model(dataclasses.replace(config, num_classes=2)).model  # as before
    assert torch.equal(
        same.roi_heads.box_predictor.cls_score.weight,
        stored["model"]["roi_heads.box_predictor.cls_score.weight"],
    )
