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
