"""Micro-batching: images from many requests, one inference thread, one bounded queue.

Requests put jobs (one decoded image each, with the request's threshold and cap) on the queue
and wait on their futures; the thread takes the oldest job, waits up to ``batch_timeout`` from
that job's arrival for more (never past ``max_batch_size``), and runs the jobs that share a
threshold, a cap and an image size through one ``Detector.detect`` call (``Job.key``: the
result of an image never depends on the others in its batch). A full queue refuses new jobs at
once (``QueueFull``: the service answers 503 with Retry-After) instead of growing.

The thread also loads the model (when given a loader rather than a detector) and runs one
warm-up inference before ``ready`` is set: ``/readyz`` answers 503 until then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gunctl.serve")
WARMUP_SHAPE = (3, 240, 320)  # about the data set's images (~180x280 px)


GPU_BATCH = 8  # --max-batch-size when not given, on CUDA; 1 on the CPU (config.py)


def batch_size_for(requested: int | None, device) -> int:
    """--max-batch-size as given, else by the model's device."""
    if requested is not None:
        return requested
    return GPU_BATCH if getattr(device, "type", str(device)) == "cuda" else 1


class QueueFull(Exception):
    """The queue holds ``max_queue`` images already."""


class NotReady(Exception):
    """The model is loading, failed to load, or the service is stopping."""


@dataclass
class Job:
    image: Any  # uint8 3xHxW torch tensor
    score_threshold: float | None = None
    max_detections: int | None = None
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    # Filled by the inference thread: seconds waiting, seconds of its forward pass, batch size.
    queue_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0

    @property
    def key(self) -> tuple:
        """Jobs that may share a forward pass: one threshold, one cap and one image size.
        torchvision pads a batch's images to a common size, which moves scores (by more than
        1e-3 on some images); images of one size (a camera's frames) need no padding, so a
        response never depends on what else was queued."""
        return self.score_threshold, self.max_detections, tuple(self.image.shape[-2:])


class Batcher:
    """The one inference thread of a process and its bounded queue (``max_batch_size`` None:
    by the model's device, once loaded; ``metrics``: optional gunctl.core.serve.metrics.Metrics)."""

    def __init__(
        self,
        load: Callable[[], Any],
        max_batch_size: int | None,
        batch_timeout_s: float,
        max_queue: int,
        metrics=None,
    ):
        self._load = load
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.max_queue = max_queue
        self.metrics = metrics
        self.detector = None
        self.ready = threading.Event()
        self.failure: str | None = None  # why the model could not be loaded
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="gunctl-inference", daemon=True)

    # --- the requests' side --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of ``jobs`` or none (a batch request is not split)."""
        with self._cond:
            if self._stopping or not self.ready.is_set():
                raise NotReady(self.state())
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} image(s) queued, limit {self.max_queue}")
            self._queue.extend(jobs)
            self._depth()
            self._cond.notify()

    def depth(self) -> int:
        return len(self._queue)

    def state(self) -> str:
        if self.failure:
            return f"the model could not be loaded: {self.failure}"
        if self._stopping:
            return "shutting down"
        return "ready" if self.ready.is_set() else "loading the model and warming up"

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the inference thread ------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.detector = self._load()
            self.max_batch_size = batch_size_for(self.max_batch_size, self.detector.device)
            self._warm_up()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log, not raised
            from gunctl.errors import first_line

            self.failure = first_line(exc)
            log.error("model not loaded: %s", self.failure)
            return
        self.ready.set()
        if self.metrics is not None:
            self.metrics.loaded(self.detector.identity)
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _warm_up(self) -> None:
        import torch

        started = time.perf_counter()
        self.detector.detect([torch.full(WARMUP_SHAPE, 114, dtype=torch.uint8)])
        log.info("warm-up inference: %.0f ms", 1000 * (time.perf_counter() - started))

    def _take(self) -> list[Job] | None:
        """The next batch (jobs cancelled while waiting left out); None: stopped and empty."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].queued_at + self.batch_timeout_s
            while len(self._queue) < self.max_batch_size and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            count = min(len(self._queue), self.max_batch_size)
            batch = [self._queue.popleft() for _ in range(count)]
            self._depth()
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _run(self, batch: list[Job]) -> None:
        """One ``detect`` call per group of jobs with one key, in arrival order."""
        groups: dict[tuple, list[Job]] = {}
        for job in batch:
            groups.setdefault(job.key, []).append(job)
        for (threshold, cap, _), jobs in groups.items():
            started = time.perf_counter()
            try:
                records = self.detector.detect([j.image for j in jobs], threshold, cap)
            except Exception as exc:  # noqa: BLE001 - each request answers 500, the thread lives
                log.exception("inference failed on a batch of %d image(s)", len(jobs))
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe_batch(len(jobs), seconds, records)
            for job, record in zip(jobs, records, strict=True):
                job.queue_s = started - job.queued_at
                job.inference_s, job.batch_size = seconds, len(jobs)
                job.future.set_result(record)

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))
