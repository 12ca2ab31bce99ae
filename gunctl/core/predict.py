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
from gunctl.core import inputs
from gunctl.core.fileio import atomic_open, make_dirs, remove_created, write_with
from gunctl.core.images import ImageProblem, decode_rgb, from_planes, planes
from gunctl.core.inference import load_detector
from gunctl.errors import DataError, UsageError, cannot_write

log = logging.getLogger("gunctl")
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
    runtime: str = "torch"  # what ran the model (load_detector's choice under --runtime auto)
    rank: int = 0  # under torchrun, this process's rank (the counts are the whole job's)
    world_size: int = 1

    @property
    def images_per_s(self) -> float:
        return (self.images + self.frames) / self.seconds if self.seconds else 0.0


def predict(
    config: PredictConfig,
    on_progress: Callable[[int, int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> PredictResult:
    """``on_progress(done, total)`` counts images and frames; ``on_record(line)`` receives each
    JSONL record as it is made (for ``--json``). Under torchrun, ``predict_dist`` shares the
    inputs out across the ranks."""
    config.check()
    out = check_out(config)
    detector = load_detector(**config.detector_kwargs())
    log.info(
        "model: %s; score threshold %.4f (%s); runtime %s",
        config.checkpoint,
        detector.threshold,
        detector.threshold_origin,
        detector.identity.get("runtime", "torch"),
    )
    found = inputs.collect(config.sources)
    result = PredictResult(config.checkpoint, out, detector.threshold, str(detector.device))
    result.runtime = detector.identity.get("runtime", "torch")
    images, videos = read_found(found, config, result)
    total = len(images) + sum(frames_to_predict(info, config.vid_stride) for _, info in videos)
    run = PredictRun(config, detector, result, out, on_progress, on_record, total)
    run.go(images, videos)
    if result.images + result.frames == 0:
        raise nothing_read(result)
    return result


def nothing_read(result: PredictResult) -> DataError:
    return DataError(
        f"nothing could be read ({len(result.problems)} problem(s) above"
        + (f", {result.ignored} other file(s) left out" if result.ignored else "")
        + ")"
    )


class PredictRun:
    """One predict call: the JSONL file, the writer thread, the counters and the progress."""

    def __init__(self, config, detector, result, out, on_progress, on_record, total):
        self.config, self.detector, self.result, self.out = config, detector, result, out
        self.on_progress, self.on_record, self.total = on_progress, on_record, total
        self.done = 0
        self.jsonl = None
        self.pending: list[Future] = []
        # under torchrun: each item's place in the whole job's input order, written before
        # each JSONL line of a rank's part so that rank 0 can merge the parts in that order
        self.order: dict[inputs.Item, int] | None = None

    def go(self, images, videos) -> None:
        if not images and not videos:
            return  # nothing to read: nothing is created, no folder is left behind
        made, claim = [], None
        if self.out is not None:
            self.out, made, claim = claim_out(self.out, numbered=self.config.out is None)
            self.result.out = self.out
        try:
            self.write(images, videos, self.out / JSONL if self.out is not None else None)
        finally:
            if made and self.result.images + self.result.frames == 0:
                shutil.rmtree(self.out, ignore_errors=True)  # nothing read: leave nothing behind
                remove_created(made)
            if claim is not None:
                os.close(claim)

    def write(self, images, videos, jsonl: Path | None) -> None:
        """Detect ``images``, then ``videos``, into the claimed folder: annotated copies, and
        the records in ``jsonl`` (with --save-json)."""
        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="gunctl-draw") as self.writer:
                if self.config.save_json and jsonl is not None:
                    self._with_jsonl(images, videos, jsonl)
                else:
                    self._all(images, videos)
                self._drain(0)
        finally:
            self.result.seconds = time.perf_counter() - started

    def _with_jsonl(self, images, videos, path: Path) -> None:
        """The JSONL file is written whole (renamed into place at the end) or not at all;
        a failed write of it (a full disk) is one line naming it."""
        try:
            with atomic_open(path) as self.jsonl:
                self._all(images, videos)
                self._drain(0)  # an annotated image that failed fails the JSONL too
        except OSError as exc:
            raise cannot_write(path, exc) from None
        finally:
            self.jsonl = None

    def _all(self, images, videos) -> None:
        if images:
            self._images(images)
        for item, info in videos:
            self._video(item, info)

    # --- images ------------------------------------------------------------------------------

    def _images(self, items: list[inputs.Item]) -> None:
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
            outputs = self.detector.detect([pixels for _, pixels in good]) if good else []
            for (index, pixels), found in zip(good, outputs, strict=True):
                item = items[index]
                self.result.files += 1
                self.result.images += 1
                record = self._record(item, found)
                if self.config.save_images and self.out is not None:
                    self._submit(_save_image, self.out / item.output, pixels, record, self)
            self._advance(len(batch))

    # --- videos ------------------------------------------------------------------------------

    def _video(self, item: inputs.Item, info) -> None:
        from gunctl.core.video import FrameSource, VideoProblem, VideoWriter

        writer, target, partial = None, None, None
        if self.config.save_images and self.out is not None:
            target = self.out / item.output
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            rate = info.rate / self.config.vid_stride
            try:
                writer = VideoWriter(partial, info.width, info.height, rate, target.suffix.lower())
            except VideoProblem as problem:
                _problem(self.result, f"{item.path}: {problem}")
                return
        self.result.files += 1
        before, batch = self.result.frames, []
        source = FrameSource(
            item.path, stride=self.config.vid_stride, max_pixels=self.config.max_pixels
        )
        try:
            for frame in source.frames():
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
        if self.result.frames == before:  # no frame at all (a truncated container): no output
            self.result.files -= 1
            if writer is not None:
                self._submit(_discard_video, writer, partial)
        elif writer is not None:
            self._submit(_close_video, writer, partial, target)

    def _frames(self, item, batch, writer) -> None:
        tensors = [torch.from_numpy(f.pixels).permute(2, 0, 1) for f in batch]
        for frame, found in zip(batch, self.detector.detect(tensors), strict=True):
            self.result.frames += 1
            record = self._record(item, found, frame)
            if writer is not None:
                self._submit(_write_frame, writer, frame.pixels, record, self)
        self._advance(len(batch))

    # --- shared ------------------------------------------------------------------------------

    def _record(self, item, found: dict, frame=None) -> dict:
        """The inference core's record, placed: where it came from and what was written."""
        record = {
            "source": str(item.path),
            "member": item.member,
            "frame": frame.index if frame is not None else None,
            "time": round(frame.time, 4) if frame is not None else None,
            **found,
            "output": item.output if self.config.save_images and self.out is not None else None,
        }
        self.result.detections += len(found["labels"])
        self.result.with_detection += bool(found["labels"])
        line = {k: v for k, v in record.items() if k != "label_ids"}
        if self.jsonl is not None:
            text = json.dumps(line)
            if self.order is not None:
                text = f"{self.order[item]} {text}"
            self.jsonl.write((text + "\n").encode())
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

    def __init__(self, items: list[inputs.Item], max_pixels: int):
        self.items, self.max_pixels = items, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        try:
            rgb, _ = decode_rgb(inputs.read_item(item), self.max_pixels)
        except ImageProblem as problem:
            return index, None, f"{item.name}: {problem.detail or problem.kind}"
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            return index, None, f"{item.name}: cannot read ({getattr(exc, 'strerror', 0) or exc})"
        pixels = torch.from_numpy(planes(rgb))
        return index, pixels, None


def _save_image(target: Path, pixels: torch.Tensor, record: dict, run: PredictRun) -> None:
    image = from_planes(pixels)
    _draw(image, record, run)
    fmt = "PNG" if target.suffix.lower() == ".png" else "JPEG"  # inputs named it (.jpg added)
    write_with(target, lambda handle: image.save(handle, format=fmt, quality=90))


def _write_frame(writer, pixels: np.ndarray, record: dict, run: PredictRun) -> None:
    from PIL import Image

    image = Image.fromarray(pixels)
    _draw(image, record, run)
    writer.write(np.asarray(image))


def _draw(image, record: dict, run: PredictRun) -> None:
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


def read_found(found: inputs.Collected, config: PredictConfig, result: PredictResult):
    """The images and the probed videos (item, info) to predict, in the order they are
    predicted; what was left out is counted and named in ``result``."""
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
    return [i for i in found.items if i.kind == "image"], videos


def frames_to_predict(info, vid_stride: int) -> int:
    """How many frames of a probed video are predicted (1 when the container does not say)."""
    return math.ceil(max(info.frames, 1) / vid_stride)


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


def check_out(config: PredictConfig) -> Path | None:
    """The output folder (not created yet), or None when nothing is to be written."""
    if not (config.save_images or config.save_json):
        return None
    if config.out is not None:
        if config.out.exists() and (not config.out.is_dir() or any(config.out.iterdir())):
            raise UsageError(
                f"{config.out}: already exists; predict never overwrites, pick a new --out"
            )
        return config.out
    return config.layout.root / "predictions" / datetime.now().strftime("%Y%m%d-%H%M%S")


def claim_out(out: Path, numbered: bool) -> tuple[Path, list[Path], int]:
    """Create the output folder exclusively and lock it for the run: (folder, the folders
    created, the locked descriptor). A second predict into the same --out is refused, even
    at the same moment; the default timestamped folder takes -2, -3... when taken."""
    import fcntl

    made: list[Path] = []
    candidate, number = out, 1
    try:
        made = make_dirs(out.parent)
        while True:
            try:
                os.mkdir(candidate)
                made.append(candidate)
                break
            except FileExistsError:
                if not numbered:
                    break
                number += 1
                candidate = out.with_name(f"{out.name}-{number}")
        fd = os.open(candidate, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        remove_created(made)
        if isinstance(exc, NotADirectoryError):
            raise UsageError(
                f"{out}: already exists; predict never overwrites, pick a new --out"
            ) from None
        raise cannot_write(out, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if made and made[-1] == candidate:
            return candidate, made, fd
        if next(os.scandir(candidate), None) is None:  # an empty folder that was there: ours
            return candidate, [], fd
        message = f"{out}: already exists; predict never overwrites, pick a new --out"
    except BlockingIOError:
        message = f"{out}: being written by another gunctl predict; pick a new --out"
    os.close(fd)
    remove_created([p for p in made if p != candidate])  # the folder may be another's now
    raise UsageError(message)


def _problem(result: PredictResult, line: str) -> None:
    result.problems.append(line)
    log.warning("%s", line)


def _worker_init(_worker_id: int) -> None:
    import signal

    torch.set_num_threads(1)  # decoding needs no intra-op threads; the model keeps the cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)
