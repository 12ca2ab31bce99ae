"""Video frames in and out with PyAV (FFmpeg's libraries; chosen by measurement, see
benchmarks/README.md). ``av`` is imported inside the functions: `gunctl --help` stays fast.

``FrameSource`` is the one way frames come in, for `gunctl predict`'s videos and for
`gunctl watch`'s files, network streams (RTSP, RTMP, HTTP(S), ...) and capture devices: it
opens with the options that keep latency low and make hangs impossible (RTSP over TCP, no
input buffering, FFmpeg socket timeouts and PyAV's open/read deadline on top of them), and
turns every FFmpeg failure into a ``VideoProblem`` that names the source.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from gunctl.errors import first_line

_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4"}
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")


class VideoProblem(Exception):
    """A video that cannot be opened or decoded further (the message says where)."""


class VideoTimeout(VideoProblem):
    """A source that sent nothing within the open or read timeout."""


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
    arrival: float = 0.0  # time.monotonic() when it was decoded


def is_stream(location: str | Path) -> bool:
    """A network URL (rtsp://, http://, ...), as opposed to a file or a device."""
    return urlsplit(str(location)).scheme.lower() in STREAM_SCHEMES


def is_device(location: str | Path) -> bool:
    """A local capture device (Linux V4L2: /dev/video0)."""
    return str(location).startswith("/dev/video")


def stream_options(location: str | Path, read_timeout: float) -> dict[str, str]:
    """FFmpeg options for ``location``. Files: none (``nobuffer`` would drop the packets read
    while probing: a short file decodes to nothing). Streams and devices: no input buffering,
    low delay; for URLs also TCP for RTSP and a socket timeout under the name each protocol
    takes (FFmpeg >= 5 renamed RTSP's ``stimeout`` to ``timeout``; RTMP's ``timeout`` means
    "listen", so it gets ``rw_timeout``)."""
    if not (is_stream(location) or is_device(location)):
        return {}
    options = {"fflags": "nobuffer", "flags": "low_delay"}
    if not is_stream(location):
        return options
    import av

    micro = str(int(read_timeout * 1_000_000))
    scheme = urlsplit(str(location)).scheme.lower()
    options["rw_timeout"] = micro
    options["analyzeduration"] = "1000000"  # 1 s of probing, not 5: a camera opens in ~1 s
    if scheme.startswith("rtsp"):
        options["rtsp_transport"] = "tcp"
        major = int(str(getattr(av, "ffmpeg_version_info", "5")).split(".")[0] or 5)
        options["timeout" if major >= 5 else "stimeout"] = micro
    elif scheme.startswith("http"):
        options["timeout"] = micro
    return options


def describe(location: str | Path) -> str:
    """``location`` for messages: a URL without its user and password."""
    text = str(location)
    if is_stream(text):
        parts = urlsplit(text)
        if parts.username or parts.password:
            host = parts.hostname or ""
            host += f":{parts.port}" if parts.port else ""
            return parts._replace(netloc=f"***@{host}").geturl()
    return text


class FrameSource:
    """Frames of one file, URL or device, opened on ``frames()`` and closed when it ends.

    ``stride``: every Nth decoded frame; ``realtime``: a file is read at its own frame rate, as
    a camera would deliver it (streams and devices are real time anyway); ``open_timeout`` and
    ``read_timeout`` (seconds) bound every wait on the network (VideoTimeout).
    """

    def __init__(
        self,
        location: str | Path,
        *,
        stride: int = 1,
        max_pixels: int | None = None,
        realtime: bool = False,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
    ):
        self.location = location
        self.stride, self.max_pixels, self.realtime = stride, max_pixels, realtime
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.info: VideoInfo | None = None  # set once opened
        self._container = None

    @property
    def live(self) -> bool:
        return is_stream(self.location) or is_device(self.location)

    def _open(self):
        import av

        kwargs = {"options": stream_options(self.location, self.read_timeout)}
        if self.live:
            kwargs["timeout"] = (self.open_timeout, self.read_timeout)
        if is_device(self.location):
            kwargs["format"] = "v4l2"
        started = time.monotonic()
        try:
            container = av.open(str(self.location), **kwargs)
        except av.FFmpegError as exc:
            waited = time.monotonic() - started
            raise self._failure(exc, "cannot open", waited >= self.open_timeout * 0.9) from None
        if not container.streams.video:
            container.close()
            raise VideoProblem("no video stream")
        return container

    def probe(self) -> VideoInfo:
        """Open, read the header, close: the size, rate and frame count the container states."""
        import av

        try:
            with self._open() as container:
                return _info(container.streams.video[0])
        except av.FFmpegError as exc:
            raise self._failure(exc, "not a readable video") from None

    def frames(self) -> Iterator[Frame]:
        """Every ``stride``-th frame, decoded with FFmpeg's threads; VideoProblem on corrupt
        data, a frame above ``max_pixels`` (a stream may change its size after the header), or
        a source that yields no frame at all (a truncated container), after the frames decoded
        before it; VideoTimeout when a live source stays silent."""
        import av

        index = -1
        container = self._open()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if not self.live else "SLICE"  # frame threads add delay
            self.info = _info(stream)
            rate = float(self.info.rate)
            started, first = time.monotonic(), None
            for frame in container.decode(stream):
                index += 1
                if index % self.stride:
                    continue
                if self.max_pixels is not None and frame.width * frame.height > self.max_pixels:
                    raise VideoProblem(
                        f"frame {index} is {frame.width}x{frame.height} px, "
                        f"limit {self.max_pixels:,}"
                    )
                when = float(frame.time) if frame.time is not None else index / rate
                if self.realtime and not self.live:
                    first = when if first is None else first
                    delay = started + (when - first) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                pixels = frame.to_ndarray(format="rgb24")
                yield Frame(index, when, pixels, time.monotonic())
        except (av.FFmpegError, IndexError) as exc:
            raise self._failure(exc, f"decoding stopped after frame {index}") from None
        finally:
            container.close()
        if index < 0:
            raise VideoProblem("no frame could be decoded (an empty or truncated video)")

    def _failure(self, exc: BaseException, what: str, timed_out: bool = False) -> VideoProblem:
        import av

        detail = first_line(exc, 160).replace(str(self.location), describe(self.location))
        timeout = isinstance(exc, (av.ExitError, av.TimeoutError)) or timed_out
        if timeout and self.live:
            return VideoTimeout(f"{what}: no data within the timeout ({detail})")
        return VideoProblem(f"{what} ({detail})")


def _info(stream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return VideoInfo(stream.width, stream.height, Fraction(rate), int(stream.frames or 0))


def probe(path: Path) -> VideoInfo:
    return FrameSource(path).probe()


def frames(path: Path, stride: int = 1, max_pixels: int | None = None) -> Iterator[Frame]:
    """A file's frames (``FrameSource(path, ...).frames()``)."""
    return FrameSource(path, stride=stride, max_pixels=max_pixels).frames()


class VideoWriter:
    """Encodes RGB frames into ``path``'s container (H.264 for .mp4/.mov/.mkv, MPEG-4 for .avi).

    4:2:0 needs even sides: an odd side is rounded up (a 1-pixel-wide video is written 2 wide).
    """

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, container: str):
        import av

        codec = _CODECS.get(container, "mpeg4")
        if codec not in av.codecs_available:
            codec = "mpeg4"
        fmt = {".mkv": "matroska", ".mov": "mov", ".avi": "avi"}.get(container, "mp4")
        try:
            self.container = av.open(str(path), mode="w", format=fmt)
        except av.FFmpegError as exc:
            raise VideoProblem(f"cannot write {path.name} ({first_line(exc, 160)})") from None
        rate = Fraction(rate).limit_denominator(1001) or Fraction(25)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            self.stream.bit_rate = 4_000_000
        self.written = 0

    def write(self, pixels: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame = frame.reformat(self.stream.width, self.stream.height, "yuv420p")
        self.container.mux(self.stream.encode(frame))
        self.written += 1

    def close(self) -> None:
        try:
            if self.written:
                self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()
