"""The one inference core: load a checkpoint (full or slim) or an exported ONNX file once, and
turn decoded images into detections in the schema of a ``predictions.jsonl`` line.

Every consumer goes through it: ``predict``, ``serve`` and ``watch`` hold a ``Detector``;
``validate``, training's validation and ``export`` run its forward pass (``forward.py``:
``DetectionModule``, ``OneImageModule``).

``load_detector(path, ...)`` reads the file once, with one policy for class names, input size
and the default score threshold (the checkpoint's accessors); ``detector.detect(images)`` takes
uint8 ``3 x H x W`` RGB tensors and returns one record per image: ``width``, ``height``,
``boxes`` (``x1 y1 x2 y2`` in the image's own pixels), ``scores``, ``labels`` (class names) and
``label_ids``.
"""

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gunctl.core.forward import DetectionModule, configure_heads, head_limits
from gunctl.errors import CheckpointError, UsageError, first_line

ONNX_SUFFIX = ".onnx"


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
    runtime: str = "auto",
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
    return _load_checkpoint(path, device, score_threshold, max_detections, half, amp, channels_last)


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
