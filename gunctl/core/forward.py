"""The detector's forward pass as an ``nn.Module``, written once for eager PyTorch, TorchScript
and ONNX tracing, so that ``predict``, ``serve``, ``watch``, ``validate`` (and training's
validation) and the exported files compute the same thing. Only torch and torchvision here:
``inference.py`` loads models around it, ``engine.py`` scores with it.

- ``DetectionModule``: float images in [0, 1] in, boxes in their own pixels out; the shared
  resize/normalise/batch/rescale around each family's heads (``family_heads``).
- ``OneImageModule``: the exported files' signature (one image, thresholded tensors out).

torchvision resizes in double precision in eager mode and in float32 when scripted or traced,
which can make an image 1 px smaller in one than in the other (and the detections differ).
Here every mode resizes with the float32 rule, then runs torchvision's own normalisation,
batching, backbone, heads and box rescaling.

No ``from __future__ import annotations`` here: TorchScript reads the modules' annotations.
"""

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import _get_shape_onnx


def resize_for_model(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Scale a CxHxW float image so its short side is ``min_size`` and its long side at most
    ``max_size`` (torchvision's rule: a float32 scale, sizes floored in double precision)."""
    if torchvision._is_tracing():
        return _resize_traced(image, min_size, max_size)
    shape = torch.tensor(image.shape[-2:])
    short = torch.min(shape).to(dtype=torch.float32)
    long = torch.max(shape).to(dtype=torch.float32)
    scale = torch.min(float(min_size) / short, float(max_size) / long)
    return torch.nn.functional.interpolate(
        image[None],
        scale_factor=scale.item(),
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )[0]


@torch.jit.unused
def _resize_traced(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """The same sizes as ``resize_for_model`` computed in the graph, for ONNX: onnxruntime's
    own rounding of a scale can give an image 1 px smaller than PyTorch's."""
    shape = _get_shape_onnx(image)
    scale = torch.min(
        float(min_size) / torch.min(shape).to(torch.float32),
        float(max_size) / torch.max(shape).to(torch.float32),
    )
    size = torch.floor(shape.to(torch.float64) * scale.to(torch.float64)).to(torch.int64)
    return torch.nn.functional.interpolate(
        image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False
    )[0]


def resize_fixed(image: Tensor, size: tuple[int, int]) -> Tensor:
    """SSD's resize: to a fixed ``size`` (width, height as torchvision stores it), whatever the
    image's aspect ratio (torchvision's ``fixed_size`` rule)."""
    return torch.nn.functional.interpolate(
        image[None], size=(size[1], size[0]), mode="bilinear", align_corners=False
    )[0]


class DetectionModule(nn.Module):
    """Eval-mode detections for float CxHxW images in [0, 1]; boxes in their own pixels.

    A module (not a function) so that TorchScript can compile it with the model inside. The
    resize, normalisation, batching and box rescaling are shared; what runs between them is the
    family's (``family_heads``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.transform = model.transform
        self.heads = family_heads(model)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        transform = self.transform
        min_size, max_size = int(transform.min_size[-1]), int(transform.max_size)
        fixed = transform.fixed_size
        original: list[tuple[int, int]] = []
        resized: list[Tensor] = []
        for image in images:
            original.append((image.shape[-2], image.shape[-1]))
            image = transform.normalize(image)
            if fixed is not None:
                resized.append(resize_fixed(image, fixed))
            else:
                resized.append(resize_for_model(image, min_size, max_size))
        results: list[dict[str, Tensor]] = [{} for _ in images]
        for group in same_size_groups(resized):
            part = [resized[i] for i in group]
            sizes: list[tuple[int, int]] = [(im.shape[-2], im.shape[-1]) for im in part]
            batch = ImageList(transform.batch_images(part, transform.size_divisible), sizes)
            found = transform.postprocess(
                self.heads(batch), batch.image_sizes, [original[i] for i in group]
            )
            for j in range(len(group)):
                results[group[j]] = found[j]
        return results


def same_size_groups(images: list[Tensor]) -> list[list[int]]:
    """Indices of the images grouped by their size, in order of first appearance.

    Images of different sizes are never padded into one batch: padding changes what a
    GroupNorm layer (the scratch recipe's) averages over, and the boxes near the padded edges,
    so an image's detections would depend on the images beside it (on the sample's val split,
    mAP@0.5 0.196 in batches of 4 against 0.219 one image at a time). Grouped, a batch gives
    each image what it gets alone, in every consumer and in every runtime.
    """
    keys: list[tuple[int, int]] = []
    groups: list[list[int]] = []
    for i, image in enumerate(images):
        key = (image.shape[-2], image.shape[-1])
        found = -1
        for g, known in enumerate(keys):
            if known == key:
                found = g
        if found < 0:
            keys.append(key)
            groups.append([i])
        else:
            groups[found].append(i)
    return groups


def family_heads(model: nn.Module) -> nn.Module:
    """The family's part of the forward: a batch of resized images to detections in their
    pixels (Faster R-CNN: backbone, RPN, RoI heads; RetinaNet and FCOS: backbone, dense head,
    anchors, postprocess; SSDlite: the same without splitting per level)."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.ssd import SSD

    if isinstance(model, (RetinaNet, FCOS)):
        return _DenseHeads(model)
    if isinstance(model, SSD):
        return _SSDHeads(model)
    return _TwoStageHeads(model)


class _TwoStageHeads(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads

    def forward(self, batch: ImageList) -> list[dict[str, Tensor]]:
        features = self.backbone(batch.tensors)
        proposals, _ = self.rpn(batch, features, None)
        found, _ = self.roi_heads(features, proposals, batch.image_sizes, None)
        return found


class _DenseHeads(nn.Module):
    """RetinaNet's and FCOS's eval forward (torchvision's, from the backbone on): the head's
    outputs and the anchors split per FPN level, then the model's own postprocess. Their
    classifiers score label 0 (gunctl's background) like any class, trained towards 0 as no box
    has it; its detections are dropped."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: ImageList) -> list[dict[str, Tensor]]:
        model = self.model
        features = list(model.backbone(batch.tensors).values())
        outputs = model.head(features)
        anchors = model.anchor_generator(batch, features)
        locations = [x.size(2) * x.size(3) for x in features]
        per_location = outputs["cls_logits"].size(1) // sum(locations)  # RetinaNet's anchors
        counts = [n * per_location for n in locations]
        split: dict[str, list[Tensor]] = {}
        for key in outputs:
            split[key] = list(outputs[key].split(counts, dim=1))
        per_level = [list(a.split(counts)) for a in anchors]
        found = model.postprocess_detections(split, per_level, batch.image_sizes)
        kept: list[dict[str, Tensor]] = []
        for one in found:
            foreground = one["labels"] > 0
            kept.append({k: v[foreground] for k, v in one.items()})
        return kept


class _SSDHeads(nn.Module):
    """SSD's eval forward from the backbone on: head, default boxes, postprocess."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: ImageList) -> list[dict[str, Tensor]]:
        model = self.model
        features = list(model.backbone(batch.tensors).values())
        outputs = model.head(features)
        anchors = model.anchor_generator(batch, features)
        return model.postprocess_detections(outputs, anchors, batch.image_sizes)


class OneImageModule(nn.Module):
    """The exported files' signature: one RGB image (uint8 0-255 or float 0-1) in; boxes,
    scores and label ids scoring at least ``threshold`` out."""

    def __init__(self, model: nn.Module, threshold: float, class_names: list[str]):
        super().__init__()
        self.detect = DetectionModule(model)
        self.threshold = float(threshold)
        self.class_names = list(class_names)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        found = self.detect([image])
        keep = found[0]["scores"] >= self.threshold
        return found[0]["boxes"][keep], found[0]["scores"][keep], found[0]["labels"][keep]


def head_limits(model: nn.Module) -> nn.Module:
    """The module that holds ``score_thresh`` and ``detections_per_img``: the RoI heads of a
    two-stage detector, the model itself for single-stage ones (RetinaNet, FCOS, SSD)."""
    return getattr(model, "roi_heads", model)


def configure_heads(model: nn.Module, threshold: float, max_detections: int | None) -> None:
    """Drop boxes below ``threshold`` inside the model (less NMS work; a later ``>=`` filter
    makes the cut exact) and cap the detections per image."""
    heads = head_limits(model)
    heads.score_thresh = min(float(heads.score_thresh), threshold)
    if max_detections is not None:
        heads.detections_per_img = max_detections


def detections(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Eval-mode detections of a torchvision detector through ``DetectionModule``; a wrapper
    without torchvision's ``transform`` (flip TTA) runs its own forward, which comes back here
    for each view."""
    return DetectionModule(model)(images) if hasattr(model, "transform") else model(images)
