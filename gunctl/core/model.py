"""build_model(ModelConfig): a torchvision Faster R-CNN with a 2-class head (background, gun).

Weights:
- ``coco``: torchvision's COCO weights for the chosen model; the box predictor is replaced.
- ``imagenet``: ImageNet weights for the backbone only.
- ``none``: random initialisation (``weights_backbone=None``, so nothing is downloaded).
- ``auto``: ``coco`` when the file is in the torch cache (``$TORCH_HOME/hub/checkpoints``),
  otherwise ``none`` with a warning. Nothing is downloaded (no network probe: fast offline);
  ``coco`` downloads the file once.
- a path: a gunctl checkpoint of the same model to fine-tune from.
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from gunctl.config import ModelConfig
from gunctl.errors import CheckpointError, SourceError, UsageError, first_line

log = logging.getLogger("gunctl")

_BACKBONES = {  # the ImageNet weights each detector's backbone was trained from
    "fasterrcnn_resnet50_fpn": ("resnet50", "IMAGENET1K_V1"),
    "fasterrcnn_resnet50_fpn_v2": ("resnet50", "IMAGENET1K_V1"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("mobilenet_v3_large", "IMAGENET1K_V1"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("mobilenet_v3_large", "IMAGENET1K_V1"),
}
_DOWNLOAD_TIMEOUT_S = 15  # per socket operation: an unreachable host fails fast


@dataclass(frozen=True)
class BuiltModel:
    model: nn.Module
    weights_origin: str  # what was loaded, for the checkpoint and the TensorBoard run


def build_model(config: ModelConfig) -> BuiltModel:
    config.check()
    weights = config.weights
    if weights == "auto":
        cached = coco_weights_file(config.name)
        if cached.exists():
            weights = "coco"
        else:
            log.warning("no COCO weights cached: training from scratch (--weights coco fetches)")
            log.info("COCO weights file: %s", cached)
            return BuiltModel(_build(config, None, None), "none (auto)")
    if weights == "coco":
        return BuiltModel(_build_coco(config), "coco")
    if weights == "imagenet":
        return BuiltModel(_build(config, None, _backbone_weights(config.name)), "imagenet")
    if weights == "none":
        return BuiltModel(_build(config, None, None), "none")
    return BuiltModel(_build_from_checkpoint(config, Path(weights)), f"checkpoint:{weights}")


def to_device_layout(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move to ``device``; on CUDA, channels-last weights (faster convolutions with AMP)."""
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def coco_weights_file(name: str) -> Path:
    url = get_model_weights(name).COCO_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _build(config: ModelConfig, weights, weights_backbone) -> nn.Module:
    builder = getattr(torchvision.models.detection, config.name)
    num_classes = None if weights is not None else config.num_classes
    try:
        return builder(
            weights=weights,
            weights_backbone=weights_backbone,
            num_classes=num_classes,
            **config.builder_kwargs(),
        )
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        if weights is None and weights_backbone is None:
            raise
        raise SourceError(
            f"could not load pretrained weights for {config.name} ({first_line(exc)}); "
            "put the file in $TORCH_HOME/hub/checkpoints or use --weights none"
        ) from None


def _build_coco(config: ModelConfig) -> nn.Module:
    coco = get_model_weights(config.name).COCO_V1
    _download(coco)  # a clear error first; the builder then reads the cached file
    model = _build(config, coco, None)
    predictor = model.roi_heads.box_predictor
    in_features = predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, config.num_classes)
    return model


def _build_from_checkpoint(config: ModelConfig, path: Path) -> nn.Module:
    from gunctl.core.checkpoint import load_checkpoint, load_weights, read_facts

    checkpoint = load_checkpoint(path)
    stored = read_facts(checkpoint, path).model
    if stored != config.name:
        raise CheckpointError(
            f"{path}: made for {stored}, not {config.name}; pass --model {stored}"
        )
    model = _build(config, None, None)
    load_weights(model, checkpoint, path)
    return model


def _backbone_weights(name: str):
    backbone, member = _BACKBONES[name]
    weights = getattr(get_model_weights(backbone), member)
    _download(weights)
    return weights


def _download(weights) -> None:
    """Fetch ``weights`` into the torch cache unless already there; SourceError when offline."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    if target.exists():
        return
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        found = re.search(r"-([a-f0-9]+)\.", target.name)  # torchvision names carry a hash prefix
        torch.hub.download_url_to_file(weights.url, str(target), found and found.group(1), False)
    except Exception as exc:  # urllib, socket and hash errors alike
        raise SourceError(
            f"{target.name}: cannot download it ({first_line(exc, 60)}); put the file "
            f"in {target.parent}/ (from {weights.url}) or use --weights none"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def model_from_checkpoint(checkpoint: dict, path: Path) -> nn.Module:
    """The checkpoint's detector, rebuilt from its stored configuration, in eval mode."""
    import dataclasses

    from gunctl.config import model_config_from_dict
    from gunctl.core.checkpoint import load_weights, stored_model_config

    model_config = model_config_from_dict(stored_model_config(checkpoint, path))
    model_config = dataclasses.replace(model_config, weights="none")  # the checkpoint has them
    try:
        model = build_model(model_config).model
    except UsageError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    load_weights(model, checkpoint, path)
    return model.eval()
