"""The training step's arithmetic on the CPU: bf16 for the backbone only."""

import math

import pytest
import torch

from gunctl.config import ModelConfig
from gunctl.core.engine import TrainSetup, _optimizer_step, cpu_bf16_backbone
from gunctl.core.model import build_model

CPU = torch.device("cpu")


def _model():
    config = ModelConfig(
        name="fasterrcnn_resnet18_fpn",
        weights="none",
        norm="gn",
        fpn_levels=(2, 3, 4),
        fpn_channels=32,
        box_head_dim=32,
        min_size=64,
        max_size=96,
    )
    torch.manual_seed(0)
    return build_model(config).model.train()


def _batch():
    images = [torch.rand(3, 60, 90), torch.rand(3, 70, 80)]
    boxes = [[5.0, 5.0, 40.0, 30.0]], [[10.0, 20.0, 50.0, 60.0]]
    targets = [{"boxes": torch.tensor(b), "labels": torch.tensor([1])} for b in boxes]
    return images, targets


def _setup(model, bf16: bool) -> TrainSetup:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return TrainSetup(optimizer=optimizer, device=CPU, cpu_bf16_backbone=bf16)


def test_bf16_backbone_keeps_the_heads_and_boxes_in_fp32():
    model = _model()
    seen = {}

    def record(name):
        def hook(module, args, output):
            out = output[0][0] if isinstance(output, tuple) else output
            seen[name] = (out.dtype, torch.is_autocast_enabled("cpu"))

        return hook

    model.backbone.body.conv1.register_forward_hook(record("conv1"))
    model.rpn.head.register_forward_hook(record("rpn"))
    model.roi_heads.box_predictor.bbox_pred.register_forward_hook(record("boxes"))
    setup = _setup(model, bf16=True)
    losses = _optimizer_step(model, *_batch(), setup, epoch=0, batch=1)
    assert seen == {
        "conv1": (torch.bfloat16, True),
        "rpn": (torch.float32, False),
        "boxes": (torch.float32, False),
    }
    assert not torch.is_autocast_enabled("cpu")  # left after the step
    assert all(math.isfinite(v) for v in losses.values())
    assert setup.precision() == "bf16 backbone"
    assert model.backbone.body.conv1.weight.grad.dtype == torch.float32  # fp32 master weights
    # and the step without it is fp32 throughout
    seen.clear()
    _optimizer_step(model, *_batch(), _setup(model, bf16=False), epoch=0, batch=2)
    assert seen["conv1"] == (torch.float32, False)
    assert _setup(model, bf16=False).precision() == "fp32"


def test_bf16_backbone_leaves_autocast_when_the_backbone_raises():
    model = _model()

    def fail(module, args, output):
        raise RuntimeError("boom")

    model.backbone.body.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        _optimizer_step(model, *_batch(), _setup(model, bf16=True), epoch=0, batch=1)
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_backbone_only_on_a_cpu_with_bf16_and_with_amp():
    assert cpu_bf16_backbone(False, CPU) is False  # --no-amp
    assert cpu_bf16_backbone(True, torch.device("cuda")) is False  # CUDA has its own autocast
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_bf16_backbone(True, CPU) is native
