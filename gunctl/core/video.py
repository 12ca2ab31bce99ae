"""Video frames in and out with PyAV (FFmpeg's libraries; chosen by measurement, see
benchmarks/README.md). ``av`` is imported inside the functions: `gunctl --help` stays fast."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from gunctl.errors import first_line

_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4"}


class VideoProblem(Exception):
    """A video that cannot be opened or decoded further (the message says where)."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    rate: Fraction  # frames per second of the source
    frames: int  # as the container says; 0 when unknown


@dataclass(frozen=True)
class Frame:
    index: int  # in the source, from 0
    time: float  # seconds from the start
    pixels: np.ndarray  # H x W x 3, uint8, RGB


def probe(path: Path) -> VideoInfo:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoProblem("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return VideoInfo(stream.width, stream.height, Fraction(rate), int(stream.frames or 0))
    except av.FFmpegError as exc:
        raise VideoProblem(f"not a readable video ({first_line(exc, 160)})") from None


def frames(path: Path, stride: int = 1, max_pixels: int | None = None) -> Iterator[Frame]:
    """Every ``stride``-th frame, decoded with FFmpeg's threads; VideoProblem on corrupt data
    or a frame above ``max_pixels`` (a stream may change its size after the header the probe
    read), after the frames decoded before it."""
    import av

    index = -1
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            for frame in container.decode(stream):
                index += 1
                if index % stride:
                    continue
                if max_pixels is not None and frame.width * frame.height > max_pixels:
                    raise VideoProblem(
                        f"frame {index} is {frame.width}x{frame.height} px, limit {max_pixels:,}"
                    )
                time = float(frame.time) if frame.time is not None else index / rate
                yield Frame(index, time, frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, IndexError) as exc:
        raise VideoProblem(
            f"decoding stopped after frame {index} ({first_line(exc, 160)})"
        ) from None


class VideoWriter:
    """Encodes RGB frames into ``path``'s container (H.264 for .mp4/.mov/.mkv, MPEG-4 for .avi)."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, container: str):
        import av

        codec = _CODECS.get(container, "mpeg4")
        if codec not in av.codecs_available:
            codec = "mpeg4"
        fmt = {".mkv": "matroska", ".mov": "mov", ".avi": "avi"}.get(container, "mp4")
        self.container = av.open(str(path), mode="w", format=fmt)
        rate = Fraction(rate).limit_denominator(1001) or Fraction(25)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2  # 4:2:0
        self.stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            self.stream.bit_rate = 4_000_000

    def write(self, pixels: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame = frame.reformat(self.stream.width, self.stream.height, "yuv420p")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()
