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

What runs the forward pass is ``runtime``: torch (``_TorchBackend``), or the checkpoint traced
to ONNX in memory and run in onnxruntime or OpenVINO after a parity check against torch
(``runtimes.py``); ``auto`` picks the fastest that passes on the CPU, torch on CUDA. The one
that ran is ``detector.identity["runtime"]`` (with its parity figures, ``"parity"``).
"""

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gunctl.core.forward import DetectionModule, configure_heads, head_limits
from gunctl.errors import CheckpointError, UsageError, first_line

ONNX_SUFFIX = ".onnx"
log = logging.getLogger("gunctl")


class Detector:
    """A model loaded once for inference, with its identity, classes and default threshold.

    ``detect`` is the one way gunctl turns images into detections. Not thread-safe: a service
    runs it on one worker thread (a per-call threshold or cap below the model's own floor
    adjusts the heads for that call).
    """

    def __init__(
        self,
        backend: Any,  # _TorchBackend or runtimes.GraphBackend: run(images, threshold, cap)
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
    threshold); ``max_detections`` None: the model's own cap. ``runtime``: what runs the
    forward pass (``runtimes.py``); the one that ran is ``identity["runtime"]``.
    """
    from gunctl.config import RUNTIMES, check_device, check_number

    check_device(device)
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}; not {runtime!r}")
    if score_threshold is not None:
        check_number("--score-threshold", score_threshold, 0.0, 1.0)
    if max_detections is not None:
        check_number("--max-detections", max_detections, 1, 10_000)
    path = Path(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        return _load_onnx(path, device, score_threshold, max_detections, runtime)
    return _load_checkpoint(
        path, device, score_threshold, max_detections, half, amp, channels_last, runtime
    )


def _load_checkpoint(
    path, device, score_threshold, max_detections, half, amp, channels_last, runtime
):
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
    family = read_facts(checkpoint, path).model
    backend, ran, check = _checkpoint_runtime(runtime, backend, model, path, family, resolved)
    min_size, max_size = input_size(checkpoint, path)
    identity = _identity(path, "checkpoint", family, names)
    identity.update(min_size=min_size, max_size=max_size, epoch=checkpoint.get("epoch"))
    identity.update(runtime=ran, parity=check)
    return Detector(backend, identity, names, threshold, origin, max_detections)


def _checkpoint_runtime(runtime, torch_backend, model, path, family, device):
    """(backend, the runtime's name, its parity figures or None): torch, or the first of the
    asked runtimes (auto: ``runtimes.AUTO_ORDER`` on the CPU) that is installed and matches
    torch on the probe image. An explicit runtime that cannot run or differs: one line."""
    from gunctl.core import runtimes

    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return torch_backend, "torch", None
    if device.type != "cpu":
        raise UsageError(f"{path}: --runtime {runtime} runs on the CPU; this run is on {device}")
    explicit = runtime != "auto"
    heads = head_limits(model)
    floor, cap = float(heads.score_thresh), int(heads.detections_per_img)
    graph = None
    for name in (runtime,) if explicit else runtimes.AUTO_ORDER:
        module = runtimes.import_runtime(name, path, explicit)
        if module is None:
            continue
        try:
            graph = graph or runtimes.checkpoint_graph(model, path)
            frame = runtimes.Frame(model)
            candidate = runtimes.BACKENDS[name](module, graph, floor, path, frame)
            check = runtimes.parity(torch_backend, candidate, runtimes.PROBE_FLOOR, cap)
        except (UsageError, CheckpointError) as exc:
            if explicit:
                raise
            log.info("runtime %s skipped: %s", name, exc)
            continue
        except Exception as exc:  # the runtime's own failure on the probe image
            if explicit:
                raise UsageError(f"{path}: {family} fails in {name} ({first_line(exc)})") from None
            log.info("runtime %s skipped: %s", name, first_line(exc))
            continue
        if runtimes.passes(check):
            return candidate, name, check
        if explicit:
            raise UsageError(
                f"{path}: {family} in {name} differs from torch ({runtimes.describe(check)}); "
                "use --runtime torch"
            )
        log.info("runtime %s skipped: differs from torch (%s)", name, runtimes.describe(check))
    return torch_backend, "torch", None


def _load_onnx(path: Path, device: str, score_threshold, max_detections, runtime) -> Detector:
    from gunctl.core import runtimes

    if device not in ("auto", "cpu"):
        raise UsageError(f"{path}: ONNX files run on the CPU here (onnxruntime); not {device}")
    if runtime == "torch":
        raise UsageError(f"{path}: an ONNX file runs in onnxruntime or openvino, not torch")
    _regular_file(path)
    onnxruntime = runtimes.import_runtime("onnx", path, explicit=True)
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
    backend, ran, check = _file_runtime(runtime, onnxruntime, path, exported)
    identity = _identity(path, "onnx", meta.get("model", "onnx").strip('"'), names)
    identity.update(runtime=ran, parity=check)
    return Detector(backend, identity, names, threshold, origin, max_detections)


def _file_runtime(runtime, onnxruntime, path, exported):
    """An exported file in onnxruntime (export checked it against torch), or in OpenVINO when
    asked and it matches onnxruntime on the probe image. auto keeps onnxruntime: the file
    resizes inside the graph, where OpenVINO's float32 size arithmetic can differ by 1 px."""
    from gunctl.core import runtimes

    reference = runtimes.onnxruntime_backend(onnxruntime, path, exported, path)
    if runtime != "openvino":
        return reference, "onnx", None
    module = runtimes.import_runtime("openvino", path, explicit=True)
    candidate = runtimes.openvino_backend(module, path, exported, path)
    check = runtimes.parity(reference, candidate, exported, 10_000)
    if not runtimes.passes(check):
        raise UsageError(
            f"{path}: openvino differs from onnxruntime ({runtimes.describe(check)}); "
            "use --runtime onnx"
        )
    return candidate, "openvino", check


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
