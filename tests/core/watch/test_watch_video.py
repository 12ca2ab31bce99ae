"""video.FrameSource's options per source kind, and what it says about a source."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from gunctl.core.video import FrameSource, VideoTimeout, describe, stream_options


def test_options_per_source_kind():
    rtsp = stream_options("rtsp://cam/live", read_timeout=5)
    assert rtsp["rtsp_transport"] == "tcp" and rtsp["timeout"] == "5000000"
    assert rtsp["rw_timeout"] == "5000000" and rtsp["fflags"] == "nobuffer"
    assert stream_options("http://cam/live.ts", read_timeout=2)["timeout"] == "2000000"
    rtmp = stream_options("rtmp://cam/live", read_timeout=2)
    assert "timeout" not in rtmp and rtmp["rw_timeout"] == "2000000"  # RTMP's timeout = listen
    assert stream_options("/dev/video0", 5) == {"fflags": "nobuffer", "flags": "low_delay"}
    assert stream_options("clip.mp4", 5) == {}  # nobuffer drops a short file's frames


def test_a_url_is_described_without_its_password():
    assert describe("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"
    assert describe("rtsp://10.0.0.5/s1") == "rtsp://10.0.0.5/s1"


def test_a_source_that_accepts_and_sends_nothing_times_out():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    started = time.monotonic()
    source = FrameSource(
        f"http://user:secret@127.0.0.1:{port}/cam.ts", open_timeout=1.5, read_timeout=1.5
    )
    with pytest.raises(VideoTimeout) as caught:
        next(source.frames())
    assert time.monotonic() - started < 6
    assert "secret" not in str(caught.value)
    server.close()
