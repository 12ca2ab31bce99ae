"""What watch's tests build for themselves on 127.0.0.1: clips made from the real sample's
images, an HTTP MPEG-TS source that can drop and come back, a silent source, GStreamer's RTSP
server, a webhook receiver that is slow, then fails, then recovers; and a detector that finds
the clips' red squares exactly (so that the rules' assertions are exact)."""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

RED = (255, 0, 0)
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def background(sample: Path | None, size=(320, 240), index: int = 0) -> np.ndarray:
    """A sample image resized to ``size`` (a grey frame when the sample is absent)."""
    from PIL import Image

    if sample is None or not (sample / "Images").is_dir():
        return np.full((size[1], size[0], 3), 90, np.uint8)
    path = sorted((sample / "Images").iterdir())[index]
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize(size)).copy()


def red_frames(base: np.ndarray, count: int, red: range, step: int = 2) -> list[np.ndarray]:
    """``count`` frames of ``base``; in the frames of ``red`` a 40x30 red square moves right."""
    frames = []
    for i in range(count):
        pixels = base.copy()
        if i in red:
            x = 20 + step * (i - red.start)
            pixels[60:90, x : x + 40] = RED
        frames.append(pixels)
    return frames


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 10, gop: int = 5) -> Path:
    """H.264 in the container of the suffix (.ts: MPEG-TS), a keyframe every ``gop`` frames
    (a reader that joins mid-stream decodes from the next one)."""
    import av

    fmt = {".ts": "mpegts", ".mkv": "matroska"}.get(path.suffix)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"tune": "zerolatency", "preset": "ultrafast"}
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_jpegs(folder: Path, frames: list[np.ndarray]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(frames):
        Image.fromarray(pixels).save(folder / f"frame{i:03d}.jpg", quality=92)
    return folder


class RedDetector:
    """Finds the red square of ``red_frames`` (one box, score 0.9), nothing elsewhere."""

    threshold = 0.5
    threshold_origin = "test"

    def detect(self, images, score_threshold=None, max_detections=None):
        records = []
        for image in images:
            r, g, b = (image[i].int() for i in range(3))
            ys, xs = ((r > 180) & (g < 90) & (b < 90)).nonzero(as_tuple=True)
            found = len(xs) > 50
            box = (
                [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
                if found
                else None
            )
            records.append(
                {
                    "width": int(image.shape[2]),
                    "height": int(image.shape[1]),
                    "boxes": [box] if found else [],
                    "scores": [0.9] if found else [],
                    "labels": ["gun"] if found else [],
                    "label_ids": [1] if found else [],
                }
            )
        return records


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class TsServer:
    """http://127.0.0.1:PORT/cam.ts: a .ts file streamed at its own rate, looped; ``down()``
    drops every connection and refuses new ones (503) until ``up()``; /silent accepts and
    never sends a byte."""

    def __init__(self, clip: Path, seconds: float):
        self.data, self.rate = clip.read_bytes(), len(clip.read_bytes()) / seconds
        self.is_down = threading.Event()
        self.closing = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/silent":
                    owner.closing.wait(60)
                    return
                if owner.is_down.is_set():
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                owner._stream(self.wfile)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/cam.ts"
        self.silent_url = f"http://127.0.0.1:{self.port}/silent"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _stream(self, out) -> None:
        chunk, started, sent = 188 * 40, time.monotonic(), 0
        while not self.closing.is_set() and not self.is_down.is_set():
            for start in range(0, len(self.data), chunk):
                if self.closing.is_set() or self.is_down.is_set():
                    return
                try:
                    out.write(self.data[start : start + chunk])
                    out.flush()
                except OSError:
                    return
                sent += len(self.data[start : start + chunk])
                ahead = sent / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    def down(self) -> None:
        self.is_down.set()

    def up(self) -> None:
        self.is_down.clear()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_rtsp_server() -> bool:
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("gst-inspect-1.0") is None:
        return False
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0');"
            "from gi.repository import GstRtspServer",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


@contextlib.contextmanager
def rtsp_server(frames_dir: Path, fps: int, seconds: float):
    """rtsp://127.0.0.1:PORT/cam serving ``frames_dir``'s JPEGs (GStreamer's RTSP server)."""
    port = free_port()
    process = subprocess.Popen(
        [SYSTEM_PYTHON, str(RTSP_SCRIPT), str(port), str(frames_dir), str(fps), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line == "ready", f"the RTSP server did not start: {line!r}"
        yield f"rtsp://127.0.0.1:{port}/cam"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class WebhookReceiver:
    """POSTs on http://127.0.0.1:PORT/hook: the first ``slow`` answered after ``delay`` s (or
    when ``release`` is set), the next ``failing`` with 500, the rest with 200. Records
    (status, headers, body) of each, and when each answer went out."""

    def __init__(self, slow: int = 2, delay: float = 1.0, failing: int = 3):
        self.requests: list[tuple[int, dict, bytes]] = []
        self.answered: list[float] = []
        self.release = threading.Event()  # set it to end a slow answer early
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.lock:
                    number = len(owner.requests)
                    status = 200 if number < slow or number >= slow + failing else 500
                    owner.requests.append((status, dict(self.headers), body))
                if number < slow:
                    owner.release.wait(delay)
                owner.answered.append(time.time())  # when each answer went out
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for status, _, body in self.requests if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
