"""Validate a checkpoint on a split part or on another data folder: the core of `gunctl validate`.

``engine.evaluate`` is the math (it returns numbers); this module loads the checkpoint and the
data around it, and writes predictions when asked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gunctl.config import IngestConfig, Layout, ValidateConfig
from gunctl.core import distributed
from gunctl.core.checkpoint import (
    Checkpoint,
    class_names,
    load_checkpoint,
    read_facts,
)
from gunctl.core.dataset import GunDataset, make_loader
from gunctl.core.engine import EvalResult, amp_dtype, detection_metrics, evaluate
from gunctl.core.fileio import write_bytes_atomic
from gunctl.core.model import model_from_checkpoint, to_device_layout
from gunctl.core.rawlock import RawLock
from gunctl.errors import DataError, UsageError

log = logging.getLogger("gunctl")


@dataclass(frozen=True)
class ValidationResult:
    checkpoint: Path
    facts: dict[str, Any]  # the checkpoint's own: model, epoch, run, weights origin
    data: str  # what was scored, in words
    metrics: dict[str, float | None]
    tta: dict[str, float | None] | None = None  # with --tta: detection metrics of flip TTA
    runtime: str = "torch"  # what ran the model; only torch gives the validation losses


def validate_checkpoint(config: ValidateConfig, on_batch=None) -> ValidationResult:
    """``on_batch(images, total)`` is called after each batch (for a progress display).

    With ``config.runtime`` torch, ``engine.evaluate`` scores the model (detections and the
    validation losses); with another runtime (or auto choosing one), the detections come from
    ``inference.load_detector(...).detect``, as predict gets them, and the same metric code
    scores them (no losses: that runtime has no training mode).
    """
    config.check()
    checkpoint = load_checkpoint(config.checkpoint)
    model = _model(checkpoint, config.checkpoint)
    names = class_names(checkpoint, config.checkpoint)[1:]
    device = distributed.resolve_device(config.device, distributed.DistInfo())
    detector = _runtime_detector(config, model)
    reading = config.layout if config.data is None else None  # --data: a private scratch copy
    with (
        RawLock(reading, exclusive=False, command="gunctl validate")
        if reading
        else contextlib.nullcontext(),
        tempfile.TemporaryDirectory(prefix="gunctl-validate-") as scratch,
    ):
        dataset, described = _dataset(config, checkpoint, Path(scratch))
        loader = make_loader(dataset, config.workers, device, batch_size=config.batch_size)
        if on_batch:
            on_batch(0, len(dataset))  # the total shows before the first batch
        counted = (lambda n: on_batch(n, len(dataset))) if on_batch else None
        if detector is not None:
            result = evaluate_detector(detector, loader, config, names, counted)
        else:
            result = evaluate(
                to_device_layout(model, device, config.channels_last),
                loader,
                device,
                score_threshold=config.score_threshold,
                iou_threshold=config.iou_threshold,
                on_batch=counted,
                amp_dtype=amp_dtype(config.amp, device),
                class_names=names,
            )
        if config.save_predictions is not None:
            save_predictions(
                config.save_predictions, dataset, result, config.score_threshold, names
            )
        tta = _validate_tta(model, loader, device, config, names) if config.tta else None
    facts = read_facts(checkpoint, config.checkpoint).report()
    facts["class_names"] = names
    runtime = "torch" if detector is None else _runtime_name(detector)
    return ValidationResult(config.checkpoint, facts, described, result.metrics, tta, runtime)


def _runtime_detector(config: ValidateConfig, model):
    """The detector of ``config.runtime`` when it is not torch (None: torch, today's path).
    It keeps every box the torch model would (its heads' own score floor), so that mAP sees the
    same detections whichever runtime ran them."""
    if config.runtime == "torch":
        return None
    from gunctl.core.forward import head_limits
    from gunctl.core.inference import load_detector

    floor = float(head_limits(model).score_thresh)
    detector = load_detector(
        config.checkpoint,
        device=config.device,
        score_threshold=floor,
        amp=config.amp,
        channels_last=config.channels_last,
        runtime=config.runtime,
    )
    return None if _runtime_name(detector) == "torch" else detector


def _runtime_name(detector) -> str:
    return str(detector.identity.get("runtime") or "torch")


def evaluate_detector(detector, loader, config: ValidateConfig, names, on_batch) -> EvalResult:
    """Detections from ``detector.detect`` (uint8 images, as predict passes them), scored by
    ``engine.detection_metrics``; no losses."""
    predictions, targets = [], []
    detect_seconds = 0.0
    started = time.perf_counter()
    for images, batch_targets in loader:
        pixels = [(image * 255).round().to(torch.uint8) for image in images]
        tick = time.perf_counter()
        records = detector.detect(pixels, score_threshold=detector.threshold)
        detect_seconds += time.perf_counter() - tick
        predictions.extend(_as_tensors(record) for record in records)
        targets.extend({k: v.cpu() for k, v in t.items()} for t in batch_targets)
        if on_batch:
            on_batch(len(images))
    metrics = detection_metrics(
        predictions, targets, config.score_threshold, config.iou_threshold, names
    )
    metrics.update(
        seconds=time.perf_counter() - started,
        detect_seconds=detect_seconds,
        images_per_s=len(predictions) / detect_seconds if detect_seconds else 0.0,
    )
    return EvalResult(metrics, predictions, targets)


def _as_tensors(record: dict) -> dict[str, torch.Tensor]:
    """A predictions.jsonl record as engine's per-image tensors."""
    return {
        "boxes": torch.tensor(record["boxes"], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(record["scores"], dtype=torch.float32).reshape(-1),
        "labels": torch.tensor(record["label_ids"], dtype=torch.int64).reshape(-1),
    }


def _validate_tta(model, loader, device, config: ValidateConfig, names) -> dict:
    """The same images with horizontal-flip TTA and box fusion (detections only, no losses)."""
    from gunctl.core.tta import FlipTTA

    result = evaluate(
        FlipTTA(model).eval(),
        loader,
        device,
        score_threshold=config.score_threshold,
        iou_threshold=config.iou_threshold,
        amp_dtype=amp_dtype(config.amp, device),
        compute_losses=False,
        class_names=names,
    )
    return result.metrics


def _model(checkpoint: Checkpoint, path: Path):
    return model_from_checkpoint(checkpoint, path)


def _dataset(
    config: ValidateConfig, checkpoint: Checkpoint, scratch: Path
) -> tuple[GunDataset, str]:
    if config.data is not None:
        from gunctl.core.ingest import ingest, read_manifest

        layout = Layout(scratch)
        names = class_names(checkpoint, config.checkpoint)[1:]
        classes = {"merge_classes": names[0]} if len(names) == 1 else {"classes": tuple(names)}
        try:
            report = ingest(IngestConfig(source=str(config.data), layout=layout, **classes))
        except UsageError as exc:  # the data lack a class of the checkpoint
            raise DataError(f"{config.data}: {str(exc).removeprefix('--classes: ')}") from None
        if report.problems:
            log.warning(
                "%s: %d problem(s) repaired or skipped, as ingest would (first: %s)",
                config.data,
                len(report.problems),
                report.problems[0],
            )
        items = read_manifest(layout)["files"]
        return GunDataset(layout.raw, items), f"{config.data} (all {len(items)} images)"
    from gunctl.core.split import open_split

    split, manifest = open_split(config.layout, stale="warn")
    if read_facts(checkpoint).manifest_checksum not in (None, "", manifest.get("checksum")):
        log.warning(
            "the data in %s differ from the data the checkpoint was trained on", config.layout.raw
        )
    if config.part is None and checkpoint.get("val_images"):
        return _run_images(config, checkpoint, manifest)
    part = config.part or "val"
    items = split["train"] + split["val"] if part == "all" else split[part]
    if not items:
        raise DataError(f"{config.layout.split_file}: the {part} part is empty")
    return GunDataset(config.layout.raw, items), f"split {part} ({len(items)} images)"


def _run_images(config: ValidateConfig, checkpoint: dict, manifest: dict) -> tuple[GunDataset, str]:
    """The images the run validated on, as the checkpoint lists them, found in the manifest."""
    names = [str(name) for name in checkpoint["val_images"]]
    by_name = {entry["image"]: entry for entry in manifest.get("files", [])}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise DataError(
            f"{config.layout.raw}: {len(missing)} of the run's {len(names)} val images are not "
            f"there (first: {missing[0]}); pass --split val or --data"
        )
    subset = (checkpoint.get("config") or {}).get("subset")
    how = f", --subset {subset} of the split" if subset else ""
    described = f"the run's val images ({len(names)}{how})"
    return GunDataset(config.layout.raw, [by_name[name] for name in names]), described


def save_predictions(
    folder: Path,
    dataset: GunDataset,
    result: EvalResult,
    threshold: float,
    class_names: list[str] | tuple[str, ...] = ("gun",),
) -> None:
    """Per image: a PNG with true (green) and predicted (red) boxes; plus COCO-style JSON:
    ``predictions.json`` (detection results) and ``ground_truth.json`` (images, annotations),
    so that any COCO tool can re-score them."""
    from gunctl.core.draw import draw_detections
    from gunctl.core.images import from_planes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, detections = [], [], []
    for index, (pred, truth) in enumerate(zip(result.predictions, result.targets, strict=True)):
        image, _ = dataset[index]
        name = dataset.image_name(index)
        height, width = image.shape[-2:]
        images.append({"id": index, "file_name": name, "width": width, "height": height})
        annotations += [
            _coco_box(index, box, label, len(annotations) + i + 1)
            for i, (box, label) in enumerate(
                zip(truth["boxes"].tolist(), truth["labels"].tolist(), strict=True)
            )
        ]
        detections += [
            {**_coco_box(index, box, label), "score": round(score, 5)}
            for box, label, score in zip(
                pred["boxes"].tolist(),
                pred["labels"].tolist(),
                pred["scores"].tolist(),
                strict=True,
            )
        ]
        pixels = (image * 255).round().to(torch.uint8)
        names = ["background", *class_names]
        drawn = draw_detections(
            from_planes(pixels),
            truth["boxes"].tolist(),
            pred["boxes"].tolist(),
            pred["scores"].tolist(),
            threshold,
            pred_names=[names[k] for k in pred["labels"].tolist()]
            if len(class_names) > 1
            else None,
        )
        drawn.save(folder / f"{Path(name).stem}.png")
    categories = [{"id": k, "name": name} for k, name in enumerate(class_names, start=1)]
    write_bytes_atomic(folder / "predictions.json", json.dumps(detections).encode())
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    write_bytes_atomic(folder / "ground_truth.json", json.dumps(ground_truth).encode())


def _coco_box(
    image_id: int, box: list[float], label: int, annotation_id: int | None = None
) -> dict:
    x1, y1, x2, y2 = box
    entry = {
        "image_id": image_id,
        "category_id": int(label),
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
    }
    if annotation_id is not None:
        entry.update(id=annotation_id, area=round((x2 - x1) * (y2 - y1), 2), iscrowd=0)
    return entry
