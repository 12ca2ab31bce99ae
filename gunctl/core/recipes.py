"""Training recipes: sets of option values chosen for a way of starting.

- ``scratch``: no pretrained weights (``--weights none``, or ``auto`` when COCO weights cannot be
  had). A lighter ResNet-18 FPN without its stride-4 level, with GroupNorm (batch 2 leaves
  BatchNorm's statistics to noise),
  multi-scale training, anchors fitted to the training boxes, strong paired augmentation
  (mosaic, photometric distortion, zoom-out, IoU crop, flip), AdamW at a higher learning rate
  with weight decay, and an EMA of the weights. The figures behind each value are in
  benchmarks/README.md ("bench_quality.py").
- ``finetune``: COCO, ImageNet or gunctl-checkpoint weights: the pretrained model kept, milder
  augmentation, AdamW at the original pipeline's learning rate, EMA.
- ``plain``: gunctl's behaviour before recipes (the TrainConfig defaults): flip only, Adam 1e-4.

Other families (``--model retinanet_*``, ``fcos_*``, ``ssdlite320_mobilenet_v3_large``) take
the recipe's values that fit them (``FAMILY_OPTIONS``) and their own (``FAMILY_VALUES``): RetinaNet
and FCOS on a ResNet keep the GroupNorm, the input size, the FPN width and (RetinaNet) fitted
anchors, RetinaNet from scratch at a learning rate of 1e-4; SSDlite keeps its own
normalisation, its 320 px square input and no anchors to fit.

A recipe fills only the options the user did not set (``TrainConfig.explicit``); the resolved
values, and the recipe's name, are what the run's config, checkpoints and TensorBoard record.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from gunctl.config import (
    RATIOS,
    RECIPES,
    WEIGHT_CHOICES,
    TrainConfig,
    check_choice,
    model_family,
)
from gunctl.errors import UsageError

log = logging.getLogger("gunctl")

RESNET_FPN = ("fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet50_fpn")

SCRATCH: dict[str, Any] = {
    "model.name": "fasterrcnn_resnet18_fpn",
    "model.norm": "gn",
    "model.fpn_levels": (2, 3, 4),  # no stride-4 level: 1.65x less CPU per step (1.59 vs 2.63 s)
    # The data set's images are ~300x170 px: 192 is about their own size (256 up-samples them
    # 1.5x for nothing); with a 128-wide FPN and a 512-wide box head, 2.2x less CPU per step.
    "model.min_size": 192,
    "model.max_size": 336,
    "model.fpn_channels": 128,
    "model.box_head_dim": 512,
    "model.train_sizes": "multiscale",  # 0.75-1.25x --min-size (144-240 at 192); eval at 192
    "fit_anchors": True,
    "optimizer": "adamw",
    "lr": 3e-4,  # 6e-4 until 0.3.2: benchmarks/README.md table 10 and 14
    "weight_decay": 0.05,
    "warmup_steps": 100,
    "lr_schedule": "cosine",
    "hflip": True,
    "photometric": 0.5,
    "zoom_out": 0.3,
    "crop": 0.3,
    "mosaic": 0.25,
    "ema": True,
}
FINETUNE: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "lr_schedule": "cosine",
    "hflip": True,
    "photometric": 0.5,
    "zoom_out": 0.2,
    "crop": 0.2,
    "ema": True,
}
VALUES = {"scratch": SCRATCH, "finetune": FINETUNE, "plain": {}}
_MODEL_ONLY_RESNET = (  # ResNet-FPN only
    "model.norm",
    "model.fpn_levels",
    "model.fpn_channels",
    "model.box_head_dim",
    "fit_anchors",
)
# Of the recipes' model-specific options, those each single-stage family takes.
FAMILY_OPTIONS = {
    "retinanet": ("model.norm", "model.fpn_channels", "fit_anchors", "model.train_sizes"),
    "fcos": ("model.norm", "model.fpn_channels", "model.train_sizes"),
    "ssdlite": (),
}
# A family's own values, over the recipe's (never over the user's). SSDlite: torchvision's
# 320 px square (a fixed size: no multi-scale training). Learning rate (benchmarks/README.md,
# "SSDlite's learning rate" and "RetinaNet's"): RetinaNet from scratch takes 1e-4, which beat
# the recipe's 3e-4 on both seeds at 15 CPU-minutes (val mAP@0.5 0.193 against 0.160) and at
# 60 (0.357 against 0.322; unseen images 0.516 against 0.478); SSDlite's 3e-4 beat 1e-4 and
# 1e-3 on both seeds at 15, FCOS's beat 1e-3 and tied 1e-4.
FAMILY_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "retinanet": {"scratch": {"lr": 1e-4}},
    "ssdlite": {
        "scratch": {"model.min_size": 320, "model.max_size": 320},
        "finetune": {"model.min_size": 320, "model.max_size": 320},
    },
}


def resolve(config: TrainConfig) -> TrainConfig:
    """The config with its recipe chosen (for ``auto``) and applied to the unset options."""
    check_choice("--recipe", config.recipe, RECIPES)
    if config.minutes is not None and "epochs" in config.explicit:
        raise UsageError("--minutes sets the number of epochs; it does not go with --epochs")
    config = _choose(config) if config.recipe == "auto" else config
    values = VALUES[config.recipe]
    name = config.model.name if "model.name" in config.explicit else values.get("model.name")
    family = model_family(name or config.model.name)
    config = apply(config, {**values, **FAMILY_VALUES.get(family, {}).get(config.recipe, {})})
    if config.model.weights not in WEIGHT_CHOICES:  # a checkpoint: its architecture, to load
        config = apply(config, _architecture(config.model.weights))
    return config


def _architecture(path: str) -> dict[str, Any]:
    """The model fields a gunctl checkpoint's weights need (unless the user set them)."""
    from pathlib import Path

    from gunctl.core.checkpoint import load_checkpoint

    stored = load_checkpoint(Path(path), mmap=True)["config"].get("model", {})
    keys = (
        "name",
        "norm",
        "anchor_sizes",
        "aspect_ratios",
        "fpn_levels",
        "fpn_channels",
        "box_head_dim",
    )
    return {
        f"model.{k}": tuple(stored[k]) if isinstance(stored[k], list) else stored[k]
        for k in keys
        if k in stored
    }


def apply(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Set each of ``values`` ("field" or "model.field") unless the user set it."""
    top = {k: v for k, v in values.items() if "." not in k and k not in config.explicit}
    model = {
        k.split(".", 1)[1]: v
        for k, v in values.items()
        if k.startswith("model.") and k not in config.explicit
    }
    if "max_size" in model and "model.min_size" in config.explicit:  # the user's --min-size
        model["max_size"] = max(model["max_size"], math.ceil(config.model.min_size * 1.75))
    if model.get("train_sizes") == "multiscale":
        base = model.get("min_size", config.model.min_size)
        model["train_sizes"] = tuple(int(round(base * f / 16) * 16) for f in _MULTISCALE)
    name = model.get("name", config.model.name)
    for key in _not_taken(name):
        (model if key.startswith("model.") else top).pop(key.split(".")[-1], None)
    return dataclasses.replace(config, **top, model=dataclasses.replace(config.model, **model))


def _not_taken(name: str) -> tuple[str, ...]:
    """The recipes' model-specific options that model ``name`` does not take."""
    family = model_family(name)
    if family in FAMILY_OPTIONS:
        return tuple(
            k for k in (*_MODEL_ONLY_RESNET, "model.train_sizes") if k not in FAMILY_OPTIONS[family]
        )
    return () if name in RESNET_FPN else _MODEL_ONLY_RESNET


def _choose(config: TrainConfig) -> TrainConfig:
    weights = config.model.weights
    if weights == "none":
        return dataclasses.replace(config, recipe="scratch")
    if weights != "auto":  # coco, imagenet or a checkpoint path
        return dataclasses.replace(config, recipe="finetune")
    from gunctl.core.model import OWN_BUILDS, coco_weights_cached, coco_weights_file

    if coco_weights_cached(config.model.name):
        model = dataclasses.replace(config.model, weights="coco")
        return dataclasses.replace(config, recipe="finetune", model=model)
    log.warning(
        "no COCO weights cached: training from scratch, scratch recipe (--recipe plain: old)"
    )
    if config.model.name not in OWN_BUILDS:  # torchvision has COCO weights for these
        where = coco_weights_file(config.model.name)
        log.info(
            "COCO weights for %s (--model %s --weights coco fetches them): %s",
            config.model.name,
            config.model.name,
            where,
        )
    return dataclasses.replace(
        config, recipe="scratch", model=dataclasses.replace(config.model, weights="none")
    )


def fit_anchors(config: TrainConfig, boxes_and_sizes) -> TrainConfig:
    """Anchor sizes and aspect ratios from the training boxes, at the model's input scale:
    sizes at evenly spaced percentiles of sqrt(area) from the 2nd to the 98th, one per FPN
    level (2/26/50/74/98 for five levels), aspect ratios
    (height / width) at the 10/50/90th percentiles."""
    import torch

    model = config.model
    sides, ratios = [], []
    for boxes, (height, width) in boxes_and_sizes:
        scale = min(model.min_size / min(height, width), model.max_size / max(height, width))
        w, h = (boxes[:, 2] - boxes[:, 0]) * scale, (boxes[:, 3] - boxes[:, 1]) * scale
        keep = (w > 0) & (h > 0)
        sides.append((w * h)[keep].sqrt())
        ratios.append((h / w)[keep])
    sides, ratios = torch.cat(sides), torch.cat(ratios)
    if len(sides) < 5:
        log.warning("too few training boxes (%d) to fit anchors: keeping the model's", len(sides))
        return dataclasses.replace(config, fit_anchors=False)
    levels = (len(model.fpn_levels) if model.fpn_levels else 4) + 1  # and the pooled top
    quantiles = torch.linspace(_SIZE_Q[0], _SIZE_Q[1], levels)
    sizes = [max(1, round(float(v))) for v in torch.quantile(sides, quantiles)]
    for i in range(1, len(sizes)):  # strictly increasing, one per level
        sizes[i] = max(sizes[i], sizes[i - 1] + 1)
    low, high = RATIOS  # ModelConfig's bounds, for sliver boxes
    quantiles = torch.quantile(ratios, torch.tensor(_RATIO_Q))
    shapes = [min(max(round(float(v), 2), low), high) for v in quantiles]
    fitted = dataclasses.replace(model, anchor_sizes=tuple(sizes), aspect_ratios=tuple(shapes))
    return dataclasses.replace(config, model=fitted)


_MULTISCALE = (0.75, 0.875, 1.125, 1.25)  # shorter-side factors drawn in training
_SIZE_Q = (0.02, 0.98)  # the smallest and largest anchor; the others evenly between
_RATIO_Q = [0.1, 0.5, 0.9]
