"""build_model(ModelConfig): a torchvision detector with a head for the data's classes.

Families (``config.model_family``): Faster R-CNN (two-stage), RetinaNet and FCOS (single-stage,
ResNet + FPN with P6/P7) and SSDlite (MobileNetV3, a fixed square input of ``min_size``). Models:
torchvision's builders, plus ``fasterrcnn_resnet18_fpn``, ``fasterrcnn_resnet34_fpn``,
``retinanet_resnet18_fpn`` and ``fcos_resnet18_fpn`` (torchvision's ResNet + FPN, put together
as torchvision's own ResNet-50 builders do), lighter for the CPU. RetinaNet and FCOS take the
normalisation choice and the FPN width; RetinaNet also anchors (one size per level, with
torchvision's three octave scales); FCOS is anchor-free and SSDlite takes none of them. Faster
R-CNN's ResNet-FPN models take a normalisation choice (``ModelConfig.norm``), anchor sizes and
aspect ratios (``anchor_sizes``, ``aspect_ratios``), FPN levels and width; every Faster R-CNN
but the convolutional-head v2 takes the box head's width (``box_head_dim``).

Weights:
- ``coco``: torchvision's COCO weights for the chosen model; the box predictor (single-stage:
  the classification head) is replaced.
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

from gunctl.config import ModelConfig, model_family
from gunctl.errors import CheckpointError, SourceError, UsageError, first_line

log = logging.getLogger("gunctl")

_BACKBONES = {  # the ImageNet weights each detector's backbone was trained from
    "fasterrcnn_resnet50_fpn": ("resnet50", "IMAGENET1K_V1"),
    "fasterrcnn_resnet18_fpn": ("resnet18", "IMAGENET1K_V1"),
    "fasterrcnn_resnet34_fpn": ("resnet34", "IMAGENET1K_V1"),
    "fasterrcnn_resnet50_fpn_v2": ("resnet50", "IMAGENET1K_V1"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("mobilenet_v3_large", "IMAGENET1K_V1"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("mobilenet_v3_large", "IMAGENET1K_V1"),
    "retinanet_resnet18_fpn": ("resnet18", "IMAGENET1K_V1"),
    "retinanet_resnet50_fpn": ("resnet50", "IMAGENET1K_V1"),
    "fcos_resnet18_fpn": ("resnet18", "IMAGENET1K_V1"),
    "fcos_resnet50_fpn": ("resnet50", "IMAGENET1K_V1"),
    "ssdlite320_mobilenet_v3_large": ("mobilenet_v3_large", "IMAGENET1K_V1"),
}
OWN_BUILDS = {
    "fasterrcnn_resnet18_fpn": "resnet18",
    "fasterrcnn_resnet34_fpn": "resnet34",
    "retinanet_resnet18_fpn": "resnet18",
    "fcos_resnet18_fpn": "resnet18",
}
_RESNET_FPN = {  # take norm and the FPN's width
    **OWN_BUILDS,
    "fasterrcnn_resnet50_fpn": "resnet50",
    "retinanet_resnet50_fpn": "resnet50",
    "fcos_resnet50_fpn": "resnet50",
}
_SSD_NORM = {"eps": 0.001, "momentum": 0.03}  # torchvision's BatchNorm for SSDlite
_CONV_BOX_HEADS = {"fasterrcnn_resnet50_fpn_v2"}  # no fully connected layers to size
_GN_GROUPS = 32  # Wu & He's default; every ResNet and FPN width here divides by it
_DOWNLOAD_TIMEOUT_S = 15  # per socket operation: an unreachable host fails fast


@dataclass(frozen=True)
class BuiltModel:
    model: nn.Module
    weights_origin: str  # what was loaded, for the checkpoint and the TensorBoard run


def build_model(config: ModelConfig) -> BuiltModel:
    config.check()
    _check_model_options(config)
    weights = config.weights
    if weights == "auto":
        if config.name in OWN_BUILDS:  # no COCO weights exist for them
            return BuiltModel(_build(config, None, None), "none (auto)")
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


def coco_weights_cached(name: str) -> bool:
    """Whether torchvision's COCO weights for ``name`` are in the torch cache (none exist for
    gunctl's own ResNet-18/34 builds)."""
    return name not in OWN_BUILDS and coco_weights_file(name).exists()


def _check_model_options(config: ModelConfig) -> None:
    from gunctl.config import NORMS

    if config.norm not in NORMS:
        raise UsageError(f"--norm {config.norm}: choose one of {', '.join(NORMS)}")
    custom = config.norm != "default" or config.anchor_sizes or config.aspect_ratios
    if (custom or config.fpn_levels or _custom_fpn(config)) and config.name not in _RESNET_FPN:
        raise UsageError(
            f"--norm, --fpn-levels, --fpn-channels and anchors apply to "
            f"{', '.join(sorted(_RESNET_FPN))}, not {config.name}"
        )
    if _custom_head(config) and config.name in _CONV_BOX_HEADS:
        raise UsageError(f"--box-head-dim: {config.name}'s box head is convolutional")
    _check_family_options(config)
    levels = _levels(config)
    if config.anchor_sizes and len(config.anchor_sizes) != levels:
        raise UsageError(
            f"anchor sizes: one per FPN level ({levels}), got {len(config.anchor_sizes)}"
        )
    if (config.fpn_levels or _custom_widths(config)) and config.weights == "coco":
        raise UsageError(
            "--fpn-levels, --fpn-channels and --box-head-dim do not fit COCO weights; "
            "use imagenet or none"
        )
    if config.name in OWN_BUILDS and config.weights == "coco":
        raise UsageError(f"torchvision has no COCO weights for {config.name}; use imagenet or none")
    pretrained_misfit = config.norm == "gn" or (config.norm == "bn" and config.weights == "coco")
    if config.weights in ("coco", "imagenet") and pretrained_misfit:
        raise UsageError(
            f"--norm {config.norm} does not fit {config.weights} weights; "
            "use --norm default or frozen_bn"
        )


def _check_family_options(config: ModelConfig) -> None:
    """What the single-stage families do not have: a box head, FPN level choice (RetinaNet and
    FCOS use C3-C5 plus P6/P7), anchors (FCOS), a variable input size (SSDlite)."""
    family = model_family(config.name)
    if family == "fasterrcnn":
        return
    if _custom_head(config):
        raise UsageError(f"--box-head-dim: {config.name} has no box head (Faster R-CNN's)")
    if config.fpn_levels:
        raise UsageError(f"--fpn-levels: {config.name} uses ResNet stages 2-4 plus P6 and P7")
    anchors = config.anchor_sizes or config.aspect_ratios
    if family == "fcos" and anchors:
        raise UsageError(f"anchors: {config.name} is anchor-free")
    if family == "retinanet" and anchors and config.weights == "coco":
        raise UsageError("anchors do not fit COCO weights; use imagenet or none")
    if family == "ssdlite" and config.train_sizes:
        raise UsageError(f"--multiscale: {config.name} resizes every image to a fixed square")


def _build(config: ModelConfig, weights, weights_backbone) -> nn.Module:
    """The family's detector; ``weights``: torchvision's COCO weights or None."""
    family = model_family(config.name)
    if family == "fasterrcnn":
        return _build_fasterrcnn(config, weights, weights_backbone)
    try:
        if family == "ssdlite":
            return _build_ssdlite(config, weights, weights_backbone)
        return _build_dense(config, weights, weights_backbone)
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        if weights is None and weights_backbone is None:
            raise
        raise SourceError(
            f"could not load pretrained weights for {config.name} ({first_line(exc)}); "
            "put the file in $TORCH_HOME/hub/checkpoints or use --weights none"
        ) from None


def _build_dense(config: ModelConfig, weights, weights_backbone) -> nn.Module:
    """RetinaNet or FCOS on a ResNet + FPN (C3-C5, P6 and P7 from P5), as torchvision's
    ResNet-50 builders put them together (same module names: COCO checkpoints load); with
    GroupNorm (--norm gn) in the backbone, the FPN and RetinaNet's head (FCOS's has it)."""
    from functools import partial

    from torchvision.models import resnet
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    kwargs = {
        "min_size": config.min_size,
        "max_size": config.max_size,
        "detections_per_img": config.box_detections_per_img,
    }
    if config.train_sizes:  # drawn in training, the last in eval (torchvision's rule)
        kwargs["min_size"] = (*config.train_sizes, config.min_size)
    retina = model_family(config.name) == "retinanet"
    if weights is not None:  # torchvision's builder with its COCO head, replaced below
        builder = getattr(torchvision.models.detection, config.name)
        return builder(weights=weights, **kwargs)
    layer = _norm_layer(config.norm, weights_backbone)
    body = getattr(resnet, _RESNET_FPN[config.name])(weights=weights_backbone, norm_layer=layer)
    channels = config.fpn_channels
    backbone = _fpn_backbone(
        body,
        3 if weights_backbone is not None else 5,  # torchvision's trainable stages
        [2, 3, 4],  # RetinaNet's paper: P2 gives too many anchors
        channels,
        norm_layer=layer if config.norm == "gn" else None,
        extra_blocks=LastLevelP6P7(channels, channels),
    )
    if not retina:
        return FCOS(backbone, config.num_classes, **kwargs)
    generator = _retina_anchors(config)
    head = RetinaNetHead(
        channels,
        generator.num_anchors_per_location()[0],
        config.num_classes,
        norm_layer=partial(nn.GroupNorm, _GN_GROUPS) if config.norm == "gn" else None,
    )
    return RetinaNet(backbone, None, anchor_generator=generator, head=head, **kwargs)


def _retina_anchors(config: ModelConfig):
    """torchvision's RetinaNet anchors (three octave scales of one size per level, three
    aspect ratios) at the config's sizes and ratios when it has them."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(config.anchor_sizes) or (32, 64, 128, 256, 512)
    ratios = tuple(float(r) for r in config.aspect_ratios) or (0.5, 1.0, 2.0)
    scales = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
    return AnchorGenerator(scales, (ratios,) * len(scales))


class SafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises with its running statistics, in training too, when a batch
    has one value per channel (SSDlite's last extra layers are 1x1: a batch of one image
    would otherwise stop training). The same parameters and buffers as ``nn.BatchNorm2d``, so
    torchvision's weights load; scriptable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.shape[0] * x.shape[2] * x.shape[3] == 1
        momentum = 0.0 if self.momentum is None else float(self.momentum)
        return nn.functional.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training and not single,
            momentum,
            self.eps,
        )


def _ssd_norm():
    from functools import partial

    return partial(SafeBatchNorm2d, **_SSD_NORM)


def _build_ssdlite(config: ModelConfig, weights, weights_backbone) -> nn.Module:
    """torchvision's SSDlite320 MobileNetV3-Large, its fixed square input at ``min_size``."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    num_classes = None if weights is not None else config.num_classes
    model = ssdlite320_mobilenet_v3_large(
        weights=weights,
        weights_backbone=weights_backbone,
        num_classes=num_classes,
        norm_layer=_ssd_norm(),
    )
    size = config.min_size
    model.transform.min_size = (size,)
    model.transform.max_size = size
    model.transform.fixed_size = (size, size)
    model.detections_per_img = config.box_detections_per_img
    return model


def _build_fasterrcnn(config: ModelConfig, weights, weights_backbone) -> nn.Module:
    builder = getattr(torchvision.models.detection, config.name, None)
    num_classes = None if weights is not None else config.num_classes
    kwargs = {**config.builder_kwargs(), **_anchor_kwargs(config)}
    try:
        custom_norm = config.name in _RESNET_FPN and config.norm != "default"
        custom = config.name in _RESNET_FPN and (
            custom_norm or bool(config.fpn_levels) or _custom_widths(config)
        )
        if config.name in OWN_BUILDS or (custom and weights is None):
            builder = _resnet_fpn_builder(config)
        model = builder(
            weights=weights,
            weights_backbone=weights_backbone,
            num_classes=num_classes,
            **kwargs,
        )
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        if weights is None and weights_backbone is None:
            raise
        raise SourceError(
            f"could not load pretrained weights for {config.name} ({first_line(exc)}); "
            "put the file in $TORCH_HOME/hub/checkpoints or use --weights none"
        ) from None
    heads = model.roi_heads
    if heads.box_predictor.cls_score.in_features != config.box_head_dim:  # torchvision: 1024
        heads.box_head, heads.box_predictor = _box_head(
            heads.box_head.fc6.in_features, config, config.num_classes
        )
    return model


def _resnet_fpn_builder(config: ModelConfig):
    """A Faster R-CNN on a torchvision ResNet + FPN, built as torchvision's ResNet-50 builder
    does (same module names, so checkpoints of either load into the other), with a choice of
    normalisation; GroupNorm also goes into the FPN, as in He et al.'s from-scratch detectors."""
    from torchvision.models import resnet
    from torchvision.models.detection import FasterRCNN

    def build(weights, weights_backbone, num_classes, **kwargs):
        layer = _norm_layer(config.norm, weights_backbone)
        arch = getattr(resnet, _RESNET_FPN[config.name])
        trainable = 3 if weights_backbone is not None else 5  # torchvision's defaults
        levels = list(config.fpn_levels) or None
        backbone = _fpn_backbone(
            arch(weights=weights_backbone, norm_layer=layer),
            trainable,
            levels,
            config.fpn_channels,
            norm_layer=layer if config.norm == "gn" else None,
        )
        if levels:  # RoIs pool from the FPN's own levels (torchvision's default names four)
            from torchvision.ops import MultiScaleRoIAlign

            names = [str(i) for i in range(len(levels))]
            kwargs = {"box_roi_pool": MultiScaleRoIAlign(names, 7, 2), **kwargs}
        if _custom_widths(config):
            pooled = config.fpn_channels * 7 * 7  # RoIAlign's 7x7 output
            kwargs["box_head"], kwargs["box_predictor"] = _box_head(pooled, config, num_classes)
            num_classes = None  # torchvision's rule: the predictor carries it
        return FasterRCNN(backbone, num_classes=num_classes, **kwargs)

    return build


def _norm_layer(norm: str, weights_backbone):
    """The ResNet backbone's normalisation layer for --norm (default: torchvision's rule,
    frozen statistics for pretrained weights, BatchNorm from scratch)."""
    if norm == "default":
        norm = "frozen_bn" if weights_backbone is not None else "bn"
    from torchvision.ops import misc as misc_ops

    return {
        "bn": nn.BatchNorm2d,
        "frozen_bn": misc_ops.FrozenBatchNorm2d,
        "gn": lambda channels: nn.GroupNorm(_GN_GROUPS, channels),
    }[norm]


def _fpn_backbone(
    body: nn.Module, trainable: int, levels, channels: int, norm_layer, extra_blocks=None
):
    """torchvision's ``_resnet_fpn_extractor`` (which fixes the FPN's width at 256) with the
    width as a parameter: the same freezing rule and module names, so checkpoints of either
    load into the other."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    train = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable]
    train += ("bn1",) if trainable == 5 else ()
    for name, parameter in body.named_parameters():
        if not name.startswith(train):
            parameter.requires_grad_(False)
    levels = levels or [1, 2, 3, 4]
    stage2 = body.inplanes // 8  # ResNet's channels at stage 2 (64 for ResNet-18)
    return BackboneWithFPN(
        body,
        {f"layer{k}": str(v) for v, k in enumerate(levels)},
        [stage2 * 2 ** (level - 1) for level in levels],
        channels,
        extra_blocks=extra_blocks or LastLevelMaxPool(),
        norm_layer=norm_layer,
    )


def _box_head(pooled: int, config: ModelConfig, num_classes: int):
    """torchvision's two-layer box head and predictor at ``config.box_head_dim``."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    head = TwoMLPHead(pooled, config.box_head_dim)
    return head, FastRCNNPredictor(config.box_head_dim, num_classes)


def _custom_fpn(config: ModelConfig) -> bool:
    return config.fpn_channels != ModelConfig().fpn_channels


def _custom_head(config: ModelConfig) -> bool:
    return config.box_head_dim != ModelConfig().box_head_dim


def _custom_widths(config: ModelConfig) -> bool:
    return _custom_fpn(config) or _custom_head(config)


def _levels(config: ModelConfig) -> int:
    """Feature maps the RPN sees: the FPN's levels plus its max-pooled top (RetinaNet: P3-P7)."""
    if model_family(config.name) == "retinanet":
        return 5
    return (len(config.fpn_levels) if config.fpn_levels else 4) + 1


def _anchor_kwargs(config: ModelConfig) -> dict:
    if model_family(config.name) != "fasterrcnn":
        return {}
    if not (config.anchor_sizes or config.aspect_ratios or config.fpn_levels):
        return {}
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    sizes = tuple(config.anchor_sizes) or (32, 64, 128, 256, 512)[-_levels(config) :]
    ratios = tuple(float(r) for r in config.aspect_ratios) or (0.5, 1.0, 2.0)
    generator = AnchorGenerator(tuple((int(s),) for s in sizes), (ratios,) * len(sizes))
    head = RPNHead(config.fpn_channels, generator.num_anchors_per_location()[0])  # FPN width
    return {"rpn_anchor_generator": generator, "rpn_head": head}


def _build_coco(config: ModelConfig) -> nn.Module:
    coco = get_model_weights(config.name).COCO_V1
    _download(coco)  # a clear error first; the builder then reads the cached file
    model = _build(config, coco, None)
    _new_predictor(model, config.num_classes)
    return model


def _new_predictor(model: nn.Module, num_classes: int) -> None:
    """A fresh box predictor (classification head, single-stage families) for ``num_classes``
    (background included), the rest kept."""
    from functools import partial

    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.ssd import SSD

    head = getattr(model, "head", None)
    if isinstance(model, RetinaNet):
        from torchvision.models.detection.retinanet import RetinaNetClassificationHead

        old = head.classification_head
        norm = partial(nn.GroupNorm, _GN_GROUPS) if _has_gn(old) else None
        channels = old.cls_logits.in_channels
        head.classification_head = RetinaNetClassificationHead(
            channels, old.num_anchors, num_classes, norm_layer=norm
        )
        return
    if isinstance(model, FCOS):
        from torchvision.models.detection.fcos import FCOSClassificationHead

        old = head.classification_head
        head.classification_head = FCOSClassificationHead(
            old.cls_logits.in_channels, old.num_anchors, num_classes
        )
        return
    if isinstance(model, SSD):
        from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

        logits = head.classification_head.module_list
        channels = [block[0][0].in_channels for block in logits]
        anchors = model.anchor_generator.num_anchors_per_location()
        head.classification_head = SSDLiteClassificationHead(
            channels, anchors, num_classes, _ssd_norm()
        )
        return
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)


def _has_gn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.GroupNorm) for m in module.modules())


def _build_from_checkpoint(config: ModelConfig, path: Path) -> nn.Module:
    """The checkpoint's weights; for data with another number of classes, with a new box
    predictor (as from COCO's 91)."""
    import dataclasses

    from gunctl.core.checkpoint import load_checkpoint, load_weights, read_facts

    checkpoint = load_checkpoint(path)
    facts = read_facts(checkpoint, path)
    if facts.model != config.name:
        raise CheckpointError(
            f"{path}: made for {facts.model}, not {config.name}; pass --model {facts.model}"
        )
    stored = facts.config["model"].get("num_classes", config.num_classes)  # checked on load
    model = _build(dataclasses.replace(config, num_classes=stored), None, None)
    load_weights(model, checkpoint, path)
    if stored != config.num_classes:
        log.warning(
            "%s: %d classes, the data %d (background included): its box predictor is replaced",
            path,
            stored,
            config.num_classes,
        )
        _new_predictor(model, config.num_classes)
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
