"""The shared forward pass: an image's detections do not depend on the images batched with it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gunctl.config import ModelConfig
from gunctl.core.forward import DetectionModule, same_size_groups
from gunctl.core.model import build_model


def test_same_size_groups_keep_first_appearance_order():
    shapes = [(3, 10, 20), (3, 12, 12), (3, 10, 20), (3, 5, 5), (3, 12, 12)]
    images = [torch.zeros(s) for s in shapes]
    assert same_size_groups(images) == [[0, 2], [1, 4], [3]]
    assert same_size_groups([]) == []


@pytest.mark.parametrize("name", ["fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn"])
def test_a_batch_of_mixed_sizes_gives_each_image_its_own_detections(name):
    # GroupNorm (the scratch recipe's) averages over the padded area: before images were grouped
    # by size, a landscape image batched with a square one got other scores than alone.
    torch.manual_seed(0)
    config = dataclasses.replace(
        ModelConfig(), name=name, weights="none", norm="gn", min_size=96, max_size=160
    )
    model = build_model(config).model.eval()
    heads = getattr(model, "roi_heads", model)
    heads.score_thresh = 0.0  # an untrained model's low scores, all of them compared
    module = DetectionModule(model)
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, h, w, generator=generator) for h, w in [(60, 100), (80, 80), (60, 100)]]
    with torch.inference_mode():
        batched = module(images)
        alone = [module([image])[0] for image in images]
    for one, other in zip(batched, alone, strict=True):
        assert one["scores"].numel() > 0
        assert torch.allclose(one["scores"], other["scores"], atol=1e-5)
        assert torch.allclose(one["boxes"], other["boxes"], atol=1e-3)
        assert torch.equal(one["labels"], other["labels"])
