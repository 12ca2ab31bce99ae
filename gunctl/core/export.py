"""`gunctl export`: the detector as one file that runs without gunctl.

- ``torchscript``: ``torch.jit.script`` of ``OneImageModule`` (load with ``torch.jit.load``);
- ``onnx``: ``torch.onnx.export`` (TorchScript-based exporter, opset 17, dynamic height and
  width), checked in onnxruntime against the eager model before it is kept;
- ``pth``: a slim, weights-only gunctl checkpoint (weights, config, class names, metrics; no
  optimizer state) that ``predict`` and ``validate`` read and ``train --resume`` refuses.

The exported model takes one RGB image tensor (3 x H x W, any size; uint8 0-255, or float
0-1 for TorchScript) and returns ``boxes`` (N x 4, x1 y1 x2 y2 in the image's pixels),
``scores`` (N) and ``labels`` (N, class indices into ``class_names``), the boxes scoring at
least the threshold that ``gunctl predict`` uses by default. Resizing and normalisation are
inside it.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from gunctl.config import ExportConfig
from gunctl.core.checkpoint import (
    class_names,
    default_score_threshold,
    load_checkpoint,
    read_facts,
    save_checkpoint,
    slim_payload,
)
from gunctl.core.fileio import write_bytes_atomic
from gunctl.core.forward import OneImageModule, configure_heads
from gunctl.core.model import model_from_checkpoint
from gunctl.core.runtimes import BOX_TOLERANCE_PX, SCORE_TOLERANCE, check_image, onnx_graph
from gunctl.errors import OutputError, UsageError, first_line

log = logging.getLogger("gunctl")
_SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx", "pth": ".slim.pth"}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    bytes: int
    checkpoint_bytes: int
    threshold: float
    class_names: list[str]
    max_box_diff: float | None = None  # vs the eager model on a check image (onnx only)
    max_score_diff: float | None = None


def export(config: ExportConfig) -> ExportResult:
    config.check()
    source = Path(config.checkpoint)
    checkpoint = load_checkpoint(source)
    out = Path(config.out) if config.out else _default_out(source, config.format)
    if out.resolve() == source.resolve():
        raise UsageError(f"{out}: is the checkpoint itself; pick another --out")
    if config.score_threshold is None:
        threshold, origin = default_score_threshold(checkpoint)
    else:
        threshold, origin = config.score_threshold, "--score-threshold"
    names = class_names(checkpoint, source)
    log.info("score threshold %.4f (%s)", threshold, origin)
    diffs: tuple[float | None, float | None] = (None, None)
    if config.format == "pth":
        save_checkpoint(out, {**slim_payload(checkpoint), "exported_from": str(source)}, "weights")
    else:
        model = model_from_checkpoint(checkpoint, source)
        configure_heads(model, threshold, None)
        wrapper = OneImageModule(model, threshold, names).eval()
        metadata = {
            "class_names": names,
            "score_threshold": threshold,
            "source": str(source),
            "model": read_facts(checkpoint, source).model,
        }
        if config.format == "torchscript":
            _torchscript(wrapper, out, metadata)
        else:
            diffs = _onnx(wrapper, out, metadata, config.opset)
    return ExportResult(
        out, config.format, out.stat().st_size, source.stat().st_size, threshold, names, *diffs
    )


def _default_out(source: Path, fmt: str) -> Path:
    stem = source.name.removesuffix(".pth").removesuffix(".pt")
    return source.with_name(stem + _SUFFIXES[fmt])


def _torchscript(wrapper: OneImageModule, out: Path, metadata: dict) -> None:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices: it still works
        try:
            scripted = torch.jit.script(wrapper)
        except Exception as exc:  # the TorchScript compiler raises many kinds
            raise OutputError(
                f"{out}: TorchScript compilation failed ({first_line(exc)})"
            ) from None
        torch.jit.save(scripted, buffer, _extra_files={"gunctl.json": json.dumps(metadata)})
    write_bytes_atomic(out, buffer.getvalue())


def _onnx(wrapper: OneImageModule, out: Path, metadata: dict, opset: int):
    onnx = _require("onnx")
    try:
        data = onnx_graph(wrapper, (check_image(360, 480, seed=0),), ["image"], opset)
    except Exception as exc:
        raise OutputError(f"{out}: ONNX export failed ({first_line(exc)})") from None
    proto = onnx.load_from_string(data)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    data = proto.SerializeToString()
    diffs = _check_onnx(wrapper, data, out)
    write_bytes_atomic(out, data)
    return diffs


def _check_onnx(wrapper: OneImageModule, data: bytes, out: Path) -> tuple[float, float]:
    """Run the file in onnxruntime on an image of another size than the traced one; refuse
    to keep it when it differs from the eager model beyond the tolerances."""
    onnxruntime = _require("onnxruntime")
    image = check_image(300, 520, seed=1)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    boxes, scores, _ = session.run(None, {"image": image.numpy()})
    with torch.inference_mode():
        eager_boxes, eager_scores, _ = wrapper(image)
    box_diff, score_diff = compare(eager_boxes.numpy(), eager_scores.numpy(), boxes, scores)
    if box_diff > BOX_TOLERANCE_PX or score_diff > SCORE_TOLERANCE:
        raise OutputError(
            f"{out}: onnxruntime differs from PyTorch (boxes by {box_diff:.3f} px, scores by "
            f"{score_diff:.2e}); not written"
        )
    return box_diff, score_diff


def compare(boxes_a, scores_a, boxes_b, scores_b) -> tuple[float, float]:
    """Largest box corner and score differences between two detection sets, matching each
    box of ``a`` to the nearest unmatched box of ``b`` (ties in score may come in any order).
    Infinite when the counts differ."""
    import numpy as np

    if len(boxes_a) != len(boxes_b):
        return float("inf"), float("inf")
    box_diff = score_diff = 0.0
    free = np.ones(len(boxes_b), dtype=bool)
    for box, score in zip(np.asarray(boxes_a), np.asarray(scores_a), strict=True):
        distance = np.abs(np.asarray(boxes_b) - box).max(axis=1)
        distance[~free] = np.inf
        best = int(distance.argmin())
        free[best] = False
        box_diff = max(box_diff, float(distance[best]))
        score_diff = max(score_diff, abs(float(scores_b[best]) - float(score)))
    return box_diff, score_diff


def _require(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UsageError(
            f"--format onnx needs the {name} package: pip install 'gunctl[export]'"
        ) from None
