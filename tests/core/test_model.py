import pytest
import torch

from gunctl.config import ModelConfig
from gunctl.core.model import build_model, coco_weights_file

NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"


def test_none_builds_two_classes_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    built = build_model(ModelConfig(name=NAME, weights="none"))
    assert built.weights_origin == "none"
    assert built.model.roi_heads.box_predictor.cls_score.out_features == 2
    assert not (tmp_path / "hub").exists()


def test_auto_offline_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level("WARNING", logger="gunctl"):
        built = build_model(ModelConfig(name=NAME, weights="auto"))
    assert built.weights_origin.startswith("none (auto")
    assert "training from scratch" in caplog.text and coco_weights_file(NAME).name in caplog.text


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
    with pytest.raises(SourceError, match="cannot download.*mobilenet_v3_large"):
        build_model(ModelConfig(name=NAME, weights="imagenet"))
