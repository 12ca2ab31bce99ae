"""Validate a checkpoint on a split part or on another data folder: the core of `gunctl validate`.

``engine.evaluate`` is the math (it returns numbers); this module loads the checkpoint and the
data around it, and writes predictions when asked.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gunctl.config import IngestConfig, Layout, ValidateConfig
from gunctl.core import distributed
from gunctl.core.checkpoint import (
    Checkpoint,
    load_checkpoint,
    read_facts,
)
from gunctl.core.dataset import GunDataset, make_loader
from gunctl.core.engine import EvalResult, amp_dtype, evaluate
from gunctl.core.fileio import write_bytes_atomic
from gunctl.core.model import model_from_checkpoint, to_device_layout
from gunctl.errors import DataError

log = logging.getLogger("gunctl")


@dataclass(frozen=True)
class ValidationResult:
    checkpoint: Path
    facts: dict[str, Any]  # the checkpoint's own: model, epoch, run, weights origin
    data: str  # what was scored, in words
    metrics: dict[str, float | None]


def validate_checkpoint(config: ValidateConfig, on_batch=None) -> ValidationResult:
    """``on_batch(images, total)`` is called after each batch (for a progress display)."""
    config.check()
    checkpoint = load_checkpoint(config.checkpoint)
    model = _model(checkpoint, config.checkpoint)
    device = distributed.resolve_device(config.device, distributed.DistInfo())
    with tempfile.TemporaryDirectory(prefix="gunctl-validate-") as scratch:
        dataset, described = _dataset(config, checkpoint, Path(scratch))
        loader = make_loader(dataset, config.workers, device, batch_size=config.batch_size)
        result = evaluate(
            to_device_layout(model, device, config.channels_last),
            loader,
            device,
            score_threshold=config.score_threshold,
            iou_threshold=config.iou_threshold,
            on_batch=(lambda n: on_batch(n, len(dataset))) if on_batch else None,
            amp_dtype=amp_dtype(config.amp, device),
        )
        if config.save_predictions is not None:
            save_predictions(config.save_predictions, dataset, result, config.score_threshold)
    facts = read_facts(checkpoint, config.checkpoint).report()
    return ValidationResult(config.checkpoint, facts, described, result.metrics)


def _model(checkpoint: Checkpoint, path: Path):
    return model_from_checkpoint(checkpoint, path)


def _dataset(
    config: ValidateConfig, checkpoint: Checkpoint, scratch: Path
) -> tuple[GunDataset, str]:
    if config.data is not None:
        from gunctl.core.ingest import ingest, read_manifest

        layout = Layout(scratch)
        report = ingest(IngestConfig(source=str(config.data), layout=layout))
        if report.problems:
            log.warning(
                "%s: %d problem(s) repaired or skipped, as ingest would (first: %s)",
                config.data,
                len(report.problems),
                report.problems[0],
            )
        items = read_manifest(layout)["files"]
        return GunDataset(layout.raw, items), f"{config.data} (all {len(items)} images)"
    from gunctl.core.ingest import read_manifest
    from gunctl.core.split import load_split

    split = load_split(config.layout.split_file)
    manifest = read_manifest(config.layout)
    if read_facts(checkpoint).manifest_checksum not in (None, "", manifest.get("checksum")):
        log.warning(
            "the data in %s differ from the data the checkpoint was trained on", config.layout.raw
        )
    items = split["train"] + split["val"] if config.part == "all" else split[config.part]
    if not items:
        raise DataError(f"{config.layout.split_file}: the {config.part} part is empty")
    return GunDataset(config.layout.raw, items), f"split {config.part} ({len(items)} images)"


def save_predictions(
    folder: Path, dataset: GunDataset, result: EvalResult, threshold: float
) -> None:
    """Per image: a PNG with true (green) and predicted (red) boxes; plus COCO-style JSON:
    ``predictions.json`` (detection results) and ``ground_truth.json`` (images, annotations),
    so that any COCO tool can re-score them."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, detections = [], [], []
    for index, (pred, truth) in enumerate(zip(result.predictions, result.targets, strict=True)):
        image, _ = dataset[index]
        name = dataset.image_name(index)
        height, width = image.shape[-2:]
        images.append({"id": index, "file_name": name, "width": width, "height": height})
        annotations += [
            _coco_box(index, box, len(annotations) + i + 1)
            for i, box in enumerate(truth["boxes"].tolist())
        ]
        detections += [
            {**_coco_box(index, box), "score": round(score, 5)}
            for box, score in zip(pred["boxes"].tolist(), pred["scores"].tolist(), strict=True)
        ]
        keep = pred["scores"] >= threshold
        boxes = torch.cat([truth["boxes"], pred["boxes"][keep]])
        colors = ["green"] * len(truth["boxes"]) + ["red"] * int(keep.sum())
        labels = ["gun"] * len(truth["boxes"]) + [f"{s:.2f}" for s in pred["scores"][keep].tolist()]
        drawn = (image * 255).round().to(torch.uint8)
        if len(boxes):
            drawn = draw_bounding_boxes(drawn, boxes, labels=labels, colors=colors, width=2)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(folder / f"{Path(name).stem}.png")
    categories = [{"id": 1, "name": "gun"}]
    write_bytes_atomic(folder / "predictions.json", json.dumps(detections).encode())
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    write_bytes_atomic(folder / "ground_truth.json", json.dumps(ground_truth).encode())


def _coco_box(image_id: int, box: list[float], annotation_id: int | None = None) -> dict:
    x1, y1, x2, y2 = box
    entry = {
        "image_id": image_id,
        "category_id": 1,
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
    }
    if annotation_id is not None:
        entry.update(id=annotation_id, area=round((x2 - x1) * (y2 - y1), 2), iscrowd=0)
    return entry
