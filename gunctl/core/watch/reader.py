"""A thread per source that reads frames and keeps only the newest, so that a slow detector
never makes latency grow; a source that drops or stays silent is reopened with backoff.

Live sources (URLs, devices, files with ``--realtime``): each new frame replaces the last one
not yet taken. Files without ``--realtime`` are read losslessly in video time: the reader
keeps one frame per 1/detect-fps of the video and waits until it is taken (a benchmark or a
recorded clip gives the same events however fast the machine is).

Events (through ``emit``): ``stream_up`` when a source opens, ``stream_down`` (with the reason:
a timeout, an error, the stream ended) once per outage; a file that ended sets ``finished``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from gunctl.core.video import (
    Frame,
    FrameSource,
    VideoProblem,
    VideoTimeout,
    describe,
    is_device,
    is_stream,
)


@dataclass(frozen=True)
class ReaderOptions:
    detect_fps: float = 5.0
    realtime: bool = False
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    max_pixels: int | None = None


class Reader(threading.Thread):
    def __init__(
        self,
        name: str,
        location: str,
        options: ReaderOptions,
        emit: Callable[[str, str, dict], None],
        wake: threading.Event,
    ):
        super().__init__(name=f"gunctl-read-{name}", daemon=True)
        self.source, self.location, self.options = name, location, options
        self.emit, self.wake = emit, wake
        self.live = is_stream(location) or is_device(location) or options.realtime
        self.reconnects = is_stream(location) or is_device(location)
        self.stop = threading.Event()
        self._cond = threading.Condition()
        self._newest: Frame | None = None
        self.finished = False  # a file ended (or a source that cannot be read again)
        self.up = False
        self.frames_read = 0
        self.dropped = 0  # live frames replaced before they were taken
        self.outages = 0
        self.last_reason = ""  # why it was last down
        self.size: tuple[int, int] | None = None

    # --- consumer side ---------------------------------------------------------------------

    def take(self) -> Frame | None:
        """The newest frame not taken yet, or None."""
        with self._cond:
            frame, self._newest = self._newest, None
            self._cond.notify_all()
        return frame

    def close(self, timeout: float = 2.0) -> None:
        self.stop.set()
        with self._cond:
            self._cond.notify_all()
        self.join(timeout)

    # --- the thread ------------------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            reason = self._read_once()
            if self.stop.is_set():
                return
            if reason is None:  # a file ended: the loop says so once its frames are done
                self.finished = True
                self.wake.set()
                return
            was_up, self.last_reason = self.up, reason
            if was_up or failures == 0:
                self.outages += 1
                self.emit("stream_down", self.source, {"reason": reason})
            self.up = False
            if not self.reconnects:
                self.finished = True
                self.wake.set()
                return
            failures = 0 if was_up else failures
            delay = min(self.options.reconnect_max, self.options.reconnect_min * 2**failures)
            failures += 1
            self.stop.wait(delay * random.uniform(0.5, 1.0))

    def _read_once(self) -> str | None:
        """Read until the source ends or fails: None when a file ended, else the reason."""
        source = FrameSource(
            self.location,
            max_pixels=self.options.max_pixels,
            realtime=self.options.realtime,
            open_timeout=self.options.open_timeout,
            read_timeout=self.options.read_timeout,
        )
        step = 1.0 / self.options.detect_fps
        due = None
        try:
            for frame in source.frames():
                if not self.up:
                    self.up = True
                    size = (frame.pixels.shape[1], frame.pixels.shape[0])
                    self.size = size
                    self.emit(
                        "stream_up",
                        self.source,
                        {"url": describe(self.location), "width": size[0], "height": size[1]},
                    )
                self.frames_read += 1
                if not self.live:
                    if due is not None and frame.time < due - 1e-6:
                        continue
                    due = frame.time + step if due is None else max(due + step, frame.time)
                self._put(frame)
                if self.stop.is_set():
                    return "stopped"
        except VideoTimeout as problem:
            return f"timeout: {problem}"
        except VideoProblem as problem:
            return str(problem)
        except Exception as exc:  # noqa: BLE001 - a reader thread must never die silently
            return f"{type(exc).__name__}: {exc}"
        return "the stream ended" if self.reconnects else None

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if not self.live:  # lossless: wait until the last one was taken
                while self._newest is not None and not self.stop.is_set():
                    self._cond.wait(0.5)
            elif self._newest is not None:
                self.dropped += 1
            self._newest = frame
        self.wake.set()
