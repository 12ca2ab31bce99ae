"""The one inference core: load a checkpoint (full or slim) or an exported ONNX file once, and
turn decoded images into detections in the schema of a ``predictions.jsonl`` line.

Every consumer goes through it: ``predict``, ``validate``'s detections, ``export`` (its files
hold ``DetectionModule``), ``serve`` and ``watch``. Two names:

- ``Detector``: what a consumer holds. ``load_detector(path, ...)`` reads the file once, with
  one policy for class names, input size and the default score threshold (the checkpoint's
  accessors); ``detector.detect(images)`` takes uint8 ``3 x H x W`` RGB tensors and returns one
  record per image: ``width``, ``height``, ``boxes`` (``x1 y1 x2 y2`` in the image's own
  pixels), ``scores``, ``labels`` (class names) and ``label_ids``.
- ``DetectionModule``: the forward pass as an ``nn.Module`` (float images in [0, 1] in, boxes
  in their own pixels out), written once for eager PyTorch, TorchScript and ONNX tracing so
  that the exported files compute what ``predict`` computes. ``OneImageModule`` adapts it to
  the exported files' signature (one image, thresholded tensors out).

torchvision resizes in double precision in eager mode and in float32 when scripted or traced,
which can make an image 1 px smaller in one than in the other (and the detections differ).
Here every mode resizes with the float32 rule, then runs torchvision's own normalisation,
batching, backbone, heads and box rescaling.

No ``from __future__ import annotations`` here: TorchScript reads the modules' annotations.
"""

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import _get_shape_onnx

from gunctl.errors import CheckpointError, UsageError, first_line

ONNX_SUFFIX = ".onnx"


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
        sizes: list[tuple[int, int]] = [(im.shape[-2], im.shape[-1]) for im in resized]
        batch = ImageList(transform.batch_images(resized, transform.size_divisible), sizes)
        found = self.heads(batch)
        return transform.postprocess(found, batch.image_sizes, original)


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


class Detector:
    """A model loaded once for inference, with its identity, classes and default threshold.

    ``detect`` is the one way gunctl turns images into detections. Not thread-safe: a service
    runs it on one worker thread (a per-call threshold or cap below the model's own floor
    adjusts the heads for that call).
    """

    def __init__(
        self,
        backend: Any,  # _TorchBackend or _OnnxBackend: run(images, threshold, cap)
        identity: dict[str, Any],
        class_names: list[str],
        threshold: float,
        threshold_origin: str,
        max_detections: int | None,
    ):
        self._backend = backend
        self.identity = identity
        self.class_names = class_names
        self.threshold = threshold
        self.threshold_origin = threshold_origin
        self.max_detections = max_detections
        self.device = backend.device

    @property
    def path(self) -> Path:
        return Path(self.identity["path"])

    def detect(
        self,
        images: list[Tensor],
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[dict[str, Any]]:
        """uint8 3xHxW RGB tensors -> one record per image (see the module's docstring)."""
        threshold = self.threshold if score_threshold is None else float(score_threshold)
        cap = max_detections if max_detections is not None else self.max_detections
        if not images:
            return []
        outputs = self._backend.run(images, threshold, cap)
        return [
            self._record(image, output, threshold, cap)
            for image, output in zip(images, outputs, strict=True)
        ]

    def _record(self, image: Tensor, output: dict, threshold: float, cap: int | None) -> dict:
        scores = output["scores"].float()
        keep = torch.nonzero(scores >= threshold).flatten()
        keep = keep[scores[keep].argsort(descending=True, stable=True)]
        if cap is not None:
            keep = keep[:cap]
        ids = [int(v) for v in output["labels"][keep].tolist()]
        return {
            "width": int(image.shape[-1]),
            "height": int(image.shape[-2]),
            "boxes": [[round(v, 2) for v in box] for box in output["boxes"][keep].float().tolist()],
            "scores": [round(s, 5) for s in scores[keep].tolist()],
            "labels": [class_name(self.class_names, i) for i in ids],
            "label_ids": ids,
        }


def class_name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


def load_detector(
    path: Path | str,
    *,
    device: str = "auto",
    score_threshold: float | None = None,
    max_detections: int | None = None,
    half: bool = False,
    amp: bool = True,
    channels_last: bool = True,
) -> Detector:
    """Load a gunctl checkpoint (``.pth``, full or slim) or an exported ``.onnx`` file.

    ``score_threshold`` None: the checkpoint's best-F1 threshold, else 0.5 (an ONNX file's own
    threshold); ``max_detections`` None: the model's own cap.
    """
    from gunctl.config import check_device, check_number

    check_device(device)
    if score_threshold is not None:
        check_number("--score-threshold", score_threshold, 0.0, 1.0)
    if max_detections is not None:
        check_number("--max-detections", max_detections, 1, 10_000)
    path = Path(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        return _load_onnx(path, device, score_threshold, max_detections)
    return _load_checkpoint(
        path, device, score_threshold, max_detections, half, amp, channels_last
    )


def _load_checkpoint(path, device, score_threshold, max_detections, half, amp, channels_last):
    from gunctl.core import distributed
    from gunctl.core.checkpoint import (
        class_names,
        default_score_threshold,
        input_size,
        load_checkpoint,
        read_facts,
    )
    from gunctl.core.model import model_from_checkpoint

    checkpoint = load_checkpoint(path)
    names = class_names(checkpoint, path)
    if score_threshold is None:
        threshold, origin = default_score_threshold(checkpoint)
    else:
        threshold, origin = float(score_threshold), "--score-threshold"
    resolved = distributed.resolve_device(device, distributed.DistInfo())
    if half and resolved.type != "cuda":
        raise UsageError(f"--half needs a CUDA device; this run is on {resolved.type}")
    model = model_from_checkpoint(checkpoint, path)
    configure_heads(model, threshold, max_detections)
    backend = _TorchBackend(model, resolved, half, amp, channels_last)
    min_size, max_size = input_size(checkpoint, path)
    identity = _identity(path, "checkpoint", read_facts(checkpoint, path).model, names)
    identity.update(min_size=min_size, max_size=max_size, epoch=checkpoint.get("epoch"))
    return Detector(backend, identity, names, threshold, origin, max_detections)


def _load_onnx(path: Path, device: str, score_threshold, max_detections) -> Detector:
    if device not in ("auto", "cpu"):
        raise UsageError(f"{path}: ONNX files run on the CPU here (onnxruntime); not {device}")
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(
            f"{path}: an ONNX model needs onnxruntime (pip install onnxruntime)"
        ) from None
    _regular_file(path)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        names = json.loads(meta["class_names"])
        exported = float(json.loads(meta["score_threshold"]))
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(f"{path}: not an ONNX file written by gunctl export") from None
    except Exception as exc:  # onnxruntime raises its own kinds for a corrupt graph
        raise CheckpointError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{path}: class_names must list the background and the classes")
    if score_threshold is None:
        threshold, origin = exported, "the ONNX file's own threshold"
    else:  # the file keeps only boxes at or above its own threshold
        threshold, origin = max(float(score_threshold), exported), "--score-threshold"
    backend = _OnnxBackend(session, exported)
    identity = _identity(path, "onnx", meta.get("model", "onnx").strip('"'), names)
    return Detector(backend, identity, names, threshold, origin, max_detections)


class _TorchBackend:
    """A torchvision detector on a device, under inference_mode (autocast on CUDA)."""

    def __init__(self, model, device: torch.device, half: bool, amp: bool, channels_last: bool):
        from gunctl.core.engine import amp_dtype
        from gunctl.core.model import to_device_layout

        self.device = device
        self.half = half
        if half:
            model = model.half()
        self.model = model
        self.module = DetectionModule(to_device_layout(model, device, channels_last)).eval()
        self.amp_dtype = None if half else amp_dtype(amp, device)

    def run(self, images: list[Tensor], threshold: float, cap: int | None) -> list[dict]:
        dtype = torch.float16 if self.half else torch.float32
        batch = [image.to(self.device, non_blocking=True).to(dtype).div_(255) for image in images]
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast, _heads_at_least(self.model, threshold, cap):
            outputs = self.module(batch)
        return [{k: v.cpu() for k, v in out.items()} for out in outputs]


@contextlib.contextmanager
def _heads_at_least(model: nn.Module, threshold: float, cap: int | None) -> Iterator[None]:
    """Lower the heads' floor and raise their cap for one call when it asks for more boxes
    than the model was loaded for; restored afterwards."""
    heads = head_limits(model)
    saved = heads.score_thresh, heads.detections_per_img
    heads.score_thresh = min(saved[0], threshold)
    if cap is not None and cap > saved[1]:
        heads.detections_per_img = cap
    try:
        yield
    finally:
        heads.score_thresh, heads.detections_per_img = saved


class _OnnxBackend:
    """An exported file in onnxruntime: one image per run (the file's signature)."""

    device = torch.device("cpu")

    def __init__(self, session, threshold: float):
        self.session = session
        self.threshold = threshold

    def run(self, images: list[Tensor], threshold: float, cap: int | None) -> list[dict]:
        outputs = []
        for image in images:
            boxes, scores, labels = self.session.run(None, {"image": image.contiguous().numpy()})
            outputs.append(
                {
                    "boxes": torch.from_numpy(boxes),
                    "scores": torch.from_numpy(scores),
                    "labels": torch.from_numpy(labels),
                }
            )
        return outputs


def _identity(path: Path, fmt: str, model: str, names: list[str]) -> dict[str, Any]:
    return {
        "name": path.name,
        "path": str(path),
        "sha256": file_sha256(path),
        "format": fmt,
        "model": model,
        "class_names": list(names[1:]),
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _regular_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise CheckpointError(f"{path}: not a regular file")
