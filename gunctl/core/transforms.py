"""Paired (image, target) transforms: whatever moves pixels moves the boxes in the same call.

Random choices come from a generator seeded per (seed, epoch, image), so augmentation is
the same whatever the number of DataLoader workers, and a resumed run sees the same flips.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

Target = dict[str, torch.Tensor]


class TrainTransform:
    """Horizontal flip with probability ``hflip`` (0 turns it off), then scale to [0, 1]."""

    def __init__(self, hflip: float = 0.5):
        self.hflip = hflip

    def __call__(self, image: torch.Tensor, target: Target, generator: torch.Generator):
        if self.hflip > 0 and torch.rand((), generator=generator).item() < self.hflip:
            image, target = horizontal_flip(image, target)
        return to_float(image), target


class EvalTransform:
    """Scale to [0, 1]; no randomness."""

    def __call__(self, image: torch.Tensor, target: Target, generator: torch.Generator | None):
        return to_float(image), target


def horizontal_flip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    height, width = image.shape[-2:]
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
    flipped = F.horizontal_flip(boxes).as_subclass(torch.Tensor)
    return F.horizontal_flip(image), {**target, "boxes": flipped}


def to_float(image: torch.Tensor) -> torch.Tensor:
    return F.to_dtype(image, torch.float32, scale=True)
