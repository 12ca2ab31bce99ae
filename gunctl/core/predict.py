"""Run a checkpoint's detector on images, folders, globs, zips and videos: `gunctl predict`.

Images are read and decoded in DataLoader workers, batched, and detected under
``torch.inference_mode`` (autocast and channels-last on CUDA) at the checkpoint's own input
size. Boxes come back in the pixels of the original image. Drawing and encoding the annotated
copies run on one writer thread, beside the model. Nothing that fails to read stops the run:
each such file is one problem line, and only a run where nothing could be read is an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gunctl.config import PredictConfig
from gunctl.core import distributed, sources
from gunctl.core.checkpoint import load_checkpoint
from gunctl.core.fileio import atomic_open, write_with
from gunctl.core.images import ImageProblem, decode_rgb
from gunctl.core.inference import Detect
from gunctl.core.model import model_from_checkpoint, to_device_layout
from gunctl.errors import DataError, UsageError

log = logging.getLogger("gunctl")
DEFAULT_THRESHOLD = 0.5  # where the checkpoint records no best-F1 threshold
JSONL = "predictions.jsonl"


@dataclass
class PredictResult:
    checkpoint: Path
    out: Path | None
    threshold: float
    device: str
    files: int = 0  # images and videos read
    images: int = 0
    frames: int = 0  # video frames predicted
    with_detection: int = 0  # images and frames with at least one detection
    detections: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    ignored: int = 0

    @property
    def images_per_s(self) -> float:
        return (self.images + self.frames) / self.seconds if self.seconds else 0.0


def default_score_threshold(checkpoint: dict) -> tuple[float, str]:
    """The threshold that maximised F1 on the checkpoint's val split, else 0.5; and whence."""
    metrics = checkpoint.get("metrics") or {}
    for place in (metrics.get("val") or {}, metrics):
        value = place.get("best_f1_threshold") if isinstance(place, dict) else None
        if isinstance(value, (int, float)) and 0.0 <= value <= 1.0:
            return float(value), "best F1 on the checkpoint's val split"
    return DEFAULT_THRESHOLD, "default; the checkpoint records no best-F1 threshold"


def class_name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


class Detector:
    """A checkpoint's model on a device, with the options of a predict call."""

    def __init__(self, config: PredictConfig, checkpoint: dict):
        self.device = distributed.resolve_device(config.device, distributed.DistInfo())
        if config.half and self.device.type != "cuda":
            raise UsageError(f"--half needs a CUDA device; this run is on {self.device.type}")
        model = model_from_checkpoint(checkpoint, config.checkpoint)
        if config.score_threshold is None:
            self.threshold, self.threshold_origin = default_score_threshold(checkpoint)
        else:
            self.threshold, self.threshold_origin = config.score_threshold, "--score-threshold"
        configure_heads(model, self.threshold, config.max_detections)
        self.half = config.half
        if self.half:
            model = model.half()
        self.model = Detect(to_device_layout(model, self.device, config.channels_last))
        from gunctl.core.engine import amp_dtype

        self.amp_dtype = None if self.half else amp_dtype(config.amp, self.device)
        self.class_names = [str(n) for n in checkpoint.get("class_names") or ("background", "gun")]

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, list]]:
        """uint8 CxHxW tensors -> per image: boxes (original pixels), scores, label indices."""
        dtype = torch.float16 if self.half else torch.float32
        batch = [image.to(self.device, non_blocking=True).to(dtype).div_(255) for image in images]
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else _null()
        )
        with torch.inference_mode(), autocast:
            outputs = self.model(batch)
        return [_keep(out, self.threshold) for out in outputs]


def configure_heads(model, threshold: float, max_detections: int | None) -> None:
    """Drop boxes below ``threshold`` inside the model (less NMS work; a later ``>=`` filter
    makes the cut exact) and cap the detections per image."""
    heads = model.roi_heads
    heads.score_thresh = min(float(heads.score_thresh), threshold)
    if max_detections is not None:
        heads.detections_per_img = max_detections


def predict(
    config: PredictConfig,
    on_progress: Callable[[int, int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> PredictResult:
    """``on_progress(done, total)`` counts images and frames; ``on_record(line)`` receives each
    JSONL record as it is made (for ``--json``)."""
    config.check()
    out = _check_out(config)
    checkpoint = load_checkpoint(config.checkpoint)
    detector = Detector(config, checkpoint)
    log.info(
        "model: %s; score threshold %.4f (%s)",
        config.checkpoint,
        detector.threshold,
        detector.threshold_origin,
    )
    found = sources.collect(config.sources)
    result = PredictResult(config.checkpoint, out, detector.threshold, str(detector.device))
    result.ignored = len(found.ignored)
    for problem in found.problems:
        _problem(result, problem)
    if found.ignored:
        log.info(
            "%d file(s) left out: not images or videos (e.g. %s)",
            len(found.ignored),
            found.ignored[0],
        )
    videos = _probe_videos([i for i in found.items if i.kind == "video"], config, result)
    images = [i for i in found.items if i.kind == "image"]
    total = len(images) + sum(
        math.ceil(max(info.frames, 1) / config.vid_stride) for _, info in videos
    )
    run = _Run(config, detector, result, out, on_progress, on_record, total)
    run.go(images, videos)
    if result.images + result.frames == 0:
        raise DataError(
            f"nothing could be read ({len(result.problems)} problem(s) above"
            + (f", {result.ignored} other file(s) left out" if result.ignored else "")
            + ")"
        )
    return result


class _Run:
    """One predict call: the JSONL file, the writer thread, the counters and the progress."""

    def __init__(self, config, detector, result, out, on_progress, on_record, total):
        self.config, self.detector, self.result, self.out = config, detector, result, out
        self.on_progress, self.on_record, self.total = on_progress, on_record, total
        self.done = 0
        self.jsonl = None
        self.pending: list[Future] = []

    def go(self, images, videos) -> None:
        created = self.out is not None and not self.out.exists()
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="gunctl-draw") as self.writer:
                if self.config.save_json and self.out is not None:
                    with atomic_open(self.out / JSONL) as self.jsonl:
                        self._all(images, videos)
                else:
                    self._all(images, videos)
                self._drain(0)
        finally:
            self.result.seconds = time.perf_counter() - started
            if created and self.result.images + self.result.frames == 0:
                shutil.rmtree(self.out, ignore_errors=True)  # nothing read: leave nothing behind

    def _all(self, images, videos) -> None:
        if images:
            self._images(images)
        for item, info in videos:
            self._video(item, info)

    # --- images ------------------------------------------------------------------------------

    def _images(self, items: list[sources.Item]) -> None:
        dataset = _ImageSet(items, self.config.max_pixels)
        workers = min(self.config.workers, len(items) // max(self.config.batch_size, 1))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            num_workers=workers,
            collate_fn=list,
            pin_memory=self.detector.device.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
        )
        for batch in loader:
            good = [(i, pixels) for i, pixels, problem in batch if problem is None]
            for _, _, problem in batch:
                if problem is not None:
                    _problem(self.result, problem)
            outputs = self.detector([pixels for _, pixels in good]) if good else []
            for (index, pixels), found in zip(good, outputs, strict=True):
                item = items[index]
                self.result.files += 1
                self.result.images += 1
                record = self._record(item, pixels.shape[2], pixels.shape[1], found)
                if self.config.save_images and self.out is not None:
                    self._submit(_save_image, self.out / item.output, pixels, record, self)
            self._advance(len(batch))

    # --- videos ------------------------------------------------------------------------------

    def _video(self, item: sources.Item, info) -> None:
        from gunctl.core.video import VideoProblem, VideoWriter, frames

        writer, target, partial = None, None, None
        if self.config.save_images and self.out is not None:
            target = self.out / item.output
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            rate = info.rate / self.config.vid_stride
            writer = VideoWriter(partial, info.width, info.height, rate, target.suffix.lower())
        self.result.files += 1
        batch = []
        try:
            for frame in frames(item.path, self.config.vid_stride, self.config.max_pixels):
                batch.append(frame)
                if len(batch) == self.config.batch_size:
                    self._frames(item, batch, writer)
                    batch = []
        except VideoProblem as problem:
            _problem(self.result, f"{item.path}: {problem}")
        except BaseException:
            if writer is not None:
                self.writer.submit(_discard_video, writer, partial)
            raise
        if batch:
            self._frames(item, batch, writer)
        if writer is not None:
            self._submit(_close_video, writer, partial, target)

    def _frames(self, item, batch, writer) -> None:
        tensors = [torch.from_numpy(f.pixels).permute(2, 0, 1) for f in batch]
        for frame, found in zip(batch, self.detector(tensors), strict=True):
            self.result.frames += 1
            height, width = frame.pixels.shape[:2]
            record = self._record(item, width, height, found, frame)
            if writer is not None:
                self._submit(_write_frame, writer, frame.pixels, record, self)
        self._advance(len(batch))

    # --- shared ------------------------------------------------------------------------------

    def _record(self, item, width: int, height: int, found: dict, frame=None) -> dict:
        names = [class_name(self.detector.class_names, label) for label in found["labels"]]
        record = {
            "source": str(item.path),
            "member": item.member,
            "frame": frame.index if frame is not None else None,
            "time": round(frame.time, 4) if frame is not None else None,
            "width": width,
            "height": height,
            "boxes": found["boxes"],
            "scores": found["scores"],
            "labels": names,
            "output": item.output if self.config.save_images and self.out is not None else None,
        }
        record["label_ids"] = found["labels"]
        self.result.detections += len(names)
        self.result.with_detection += bool(names)
        line = {k: v for k, v in record.items() if k != "label_ids"}
        if self.jsonl is not None:
            self.jsonl.write((json.dumps(line) + "\n").encode())
        if self.on_record:
            self.on_record(line)
        return record

    def _submit(self, function, *args) -> None:
        self.pending.append(self.writer.submit(function, *args))
        self._drain(4 * self.config.batch_size)

    def _drain(self, keep: int) -> None:
        """Wait for the writer until at most ``keep`` jobs are pending; raise its errors."""
        while len(self.pending) > keep:
            self.pending.pop(0).result()

    def _advance(self, count: int) -> None:
        self.done += count
        if self.on_progress:
            self.on_progress(self.done, max(self.total, self.done))


class _ImageSet(torch.utils.data.Dataset):
    """Items -> (index, uint8 CxHxW tensor, None) or (index, None, problem line)."""

    def __init__(self, items: list[sources.Item], max_pixels: int):
        self.items, self.max_pixels = items, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        try:
            rgb, _ = decode_rgb(sources.read_item(item), self.max_pixels)
        except ImageProblem as problem:
            return index, None, f"{item.name}: {problem.detail or problem.kind}"
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            return index, None, f"{item.name}: cannot read ({getattr(exc, 'strerror', 0) or exc})"
        pixels = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()
        return index, pixels, None


def _save_image(target: Path, pixels: torch.Tensor, record: dict, run: _Run) -> None:
    from PIL import Image

    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    _draw(image, record, run)
    fmt = "PNG" if target.suffix.lower() == ".png" else "JPEG"
    if fmt == "JPEG" and target.suffix.lower() not in (".jpg", ".jpeg"):
        target = target.with_name(target.name + ".jpg")
    write_with(target, lambda handle: image.save(handle, format=fmt, quality=90))


def _write_frame(writer, pixels: np.ndarray, record: dict, run: _Run) -> None:
    from PIL import Image

    image = Image.fromarray(pixels)
    _draw(image, record, run)
    writer.write(np.asarray(image))


def _draw(image, record: dict, run: _Run) -> None:
    from gunctl.core.draw import annotate

    annotate(
        image,
        record["boxes"],
        record["scores"],
        record["labels"],
        run.detector.threshold,
        record["label_ids"],
    )


def _close_video(writer, partial: Path, target: Path) -> None:
    writer.close()
    os.replace(partial, target)


def _discard_video(writer, partial: Path) -> None:
    try:
        writer.close()
    finally:
        partial.unlink(missing_ok=True)


def _probe_videos(items, config: PredictConfig, result: PredictResult) -> list:
    from gunctl.core.video import VideoProblem, probe

    videos = []
    for item in items:
        try:
            info = probe(item.path)
        except VideoProblem as problem:
            _problem(result, f"{item.path}: {problem}")
            continue
        if info.width * info.height > config.max_pixels:
            _problem(
                result,
                f"{item.path}: {info.width}x{info.height} px frames, limit {config.max_pixels:,}",
            )
            continue
        videos.append((item, info))
    return videos


def _check_out(config: PredictConfig) -> Path | None:
    """The output folder (not created yet), or None when nothing is to be written."""
    if not (config.save_images or config.save_json):
        return None
    if config.out is not None:
        if config.out.exists() and (not config.out.is_dir() or any(config.out.iterdir())):
            raise UsageError(
                f"{config.out}: already exists; predict never overwrites, pick a new --out"
            )
        return config.out
    base = config.layout.root / "predictions" / datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def _problem(result: PredictResult, line: str) -> None:
    result.problems.append(line)
    log.warning("%s", line)


def _keep(output: dict[str, torch.Tensor], threshold: float) -> dict[str, list]:
    keep = output["scores"] >= threshold
    return {
        "boxes": [[round(v, 2) for v in box] for box in output["boxes"][keep].float().tolist()],
        "scores": [round(s, 5) for s in output["scores"][keep].float().tolist()],
        "labels": [int(v) for v in output["labels"][keep].tolist()],
    }


def _worker_init(_worker_id: int) -> None:
    import signal

    torch.set_num_threads(1)  # decoding needs no intra-op threads; the model keeps the cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _null():
    import contextlib

    return contextlib.nullcontext()
