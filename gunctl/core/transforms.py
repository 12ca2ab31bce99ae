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


def make_train_transform(config):
    """The training transform for a TrainConfig: the plain flip when no other augmentation is
    asked for (exactly the transform of gunctl before recipes), else AugmentTransform."""
    hflip = 0.5 if config.hflip else 0.0
    extra = (config.photometric, config.zoom_out, config.crop, config.mosaic)
    if not any(p > 0 for p in extra):
        return TrainTransform(hflip)
    return AugmentTransform(hflip, *extra)


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


class AugmentTransform:
    """The scratch and finetune recipes' augmentation, every step paired (boxes move with pixels):

    mosaic of 4 training images (probability ``mosaic``), photometric distortion (brightness,
    contrast, saturation, hue; ``photometric``), zoom-out onto a canvas up to 2x larger
    (``zoom_out``), SSD's IoU-aware random crop (``crop``; boxes are clipped to the crop, those
    whose centre leaves it are dropped), horizontal flip (``hflip``); boxes under 2 px are
    dropped. Images without boxes (negatives) go through all but the crop.

    torchvision's v2 transforms draw from torch's global RNG; they run under a forked RNG seeded
    from the per-(seed, epoch, image) generator, so the result is the same in any worker, in a
    repeated run and in a resumed one, and the training process's RNG is left alone.
    """

    wants_source = True  # GunDataset passes itself, for the mosaic's other images

    def __init__(
        self,
        hflip: float = 0.5,
        photometric: float = 0.0,
        zoom_out: float = 0.0,
        crop: float = 0.0,
        mosaic: float = 0.0,
    ):
        self.hflip, self.photometric, self.zoom_out = hflip, photometric, zoom_out
        self.crop, self.mosaic = crop, mosaic

    def __call__(self, image: torch.Tensor, target: Target, generator, source=None):
        seed = int(torch.randint(2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, boxes, labels = self._apply(image, target["boxes"], target["labels"], source)
        return to_float(image), _with_boxes(target, boxes, labels)

    def _apply(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, source):
        from torchvision.transforms import v2

        if self.mosaic > 0 and source is not None and len(source) > 1 and _chance(self.mosaic):
            others = torch.randint(len(source), (3,)).tolist()
            tiles = [(image, boxes, labels), *(source.raw_item(i) for i in others)]
            image, boxes, labels = mosaic(tiles)
        height, width = image.shape[-2:]
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": labels,
        }
        steps = []
        if self.photometric > 0:
            steps.append(v2.RandomPhotometricDistort(p=self.photometric))
        if self.zoom_out > 0:
            steps.append(v2.RandomZoomOut(fill=_FILL, side_range=(1.0, 2.0), p=self.zoom_out))
        if self.crop > 0 and len(boxes) and _chance(self.crop):
            steps.append(v2.RandomIoUCrop())
        if self.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=self.hflip))
        steps.append(v2.SanitizeBoundingBoxes(min_size=2.0))
        out = v2.Compose(steps)(sample)
        image, boxes = out["image"].as_subclass(torch.Tensor), out["boxes"]
        return image, boxes.as_subclass(torch.Tensor), out["labels"]


_FILL = {tv_tensors.Image: (124, 116, 104), "others": 0}  # ImageNet's mean colour, in uint8


def mosaic(items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Four (uint8 image, boxes, labels) on a canvas twice the first image's size, split at a random
    centre; each image is scaled to fit its quarter (aspect kept) and placed against the
    centre, so no box is cut. Draws from torch's global RNG."""
    height, width = items[0][0].shape[-2:]
    canvas_h, canvas_w = 2 * height, 2 * width
    cy = int(canvas_h * (0.3 + 0.4 * torch.rand(()).item()))
    cx = int(canvas_w * (0.3 + 0.4 * torch.rand(()).item()))
    canvas = torch.empty(3, canvas_h, canvas_w, dtype=torch.uint8)
    canvas[:] = torch.tensor(_FILL[tv_tensors.Image], dtype=torch.uint8).view(3, 1, 1)
    right, bottom = canvas_w, canvas_h
    cells = ((0, 0, cx, cy), (cx, 0, right, cy), (0, cy, cx, bottom), (cx, cy, right, bottom))
    placed, labels = [], []
    for (image, boxes, classes), (x1, y1, x2, y2), corner in zip(
        items, cells, range(4), strict=True
    ):
        h, w = image.shape[-2:]
        scale = min((x2 - x1) / w, (y2 - y1) / h)
        new_h, new_w = max(1, int(h * scale)), max(1, int(w * scale))
        left = x2 - new_w if corner in (0, 2) else x1  # against the centre
        top = y2 - new_h if corner in (0, 1) else y1
        canvas[:, top : top + new_h, left : left + new_w] = F.resize(
            image, [new_h, new_w], antialias=True
        )
        shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        scaled = boxes * torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h]) + shift
        placed.append(scaled.reshape(-1, 4))
        labels.append(classes.reshape(-1))
    return canvas, torch.cat(placed), torch.cat(labels)


def _chance(probability: float) -> bool:
    return torch.rand(()).item() < probability


def _with_boxes(target: Target, boxes: torch.Tensor, labels: torch.Tensor) -> Target:
    boxes = boxes.to(torch.float32).reshape(-1, 4)
    count = boxes.shape[0]
    return {
        **target,
        "boxes": boxes,
        "labels": labels.to(torch.int64).reshape(-1),
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(count, dtype=torch.int64),
    }
