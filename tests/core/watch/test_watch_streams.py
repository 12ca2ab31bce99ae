"""Real streams made here on 127.0.0.1: GStreamer's RTSP server, an HTTP MPEG-TS source that
drops and comes back, and a source that accepts and sends nothing, all watched at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from watchkit import (
    RedDetector,
    TsServer,
    background,
    have_rtsp_server,
    red_frames,
    rtsp_server,
    write_clip,
    write_jpegs,
)

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not have_rtsp_server(), reason="GStreamer's RTSP server (.ci/system-deps.sh)")
def test_rtsp_http_drop_and_silent_sources_at_once(tmp_path: Path, sample_data):
    from gunctl.config import WatchConfig
    from gunctl.core.watch.runner import watch

    frames = red_frames(background(sample_data, index=3), 50, range(10, 30))  # 5 s at 10 fps
    clip = write_clip(tmp_path / "cam.ts", frames, fps=10)
    jpegs = write_jpegs(tmp_path / "jpegs", frames)
    http = TsServer(clip, seconds=5.0)
    events, statuses, stop = [], [], threading.Event()
    lock = threading.Lock()

    def on_event(event):
        with lock:
            events.append((time.monotonic(), event))

    def kinds(source, kind):
        with lock:
            return [e for _, e in events if e["source"] == source and e["event"] == kind]

    with rtsp_server(jpegs, fps=10, seconds=60) as rtsp_url:
        config = WatchConfig(
            sources=(rtsp_url, http.url, http.silent_url),
            names=("rtsp", "http", "silent"),
            out=tmp_path / "out",
            cooldown=0.0,
            open_timeout=3.0,
            read_timeout=2.0,
            reconnect_min=0.5,
            reconnect_max=1.0,
        )
        started = time.monotonic()
        box = {}
        thread = threading.Thread(
            target=lambda: box.update(
                result=watch(
                    config,
                    detector=RedDetector(),
                    stop=stop,
                    on_event=on_event,
                    on_status=lambda rows: statuses.append((time.monotonic(), rows)),
                )
            )
        )
        thread.start()
        try:
            wait_for(lambda: kinds("http", "stream_up") and kinds("rtsp", "stream_up"), 20, "up")
            wait_for(lambda: kinds("silent", "stream_down"), 10, "the silent source's timeout")
            time.sleep(3)
            http.down()
            down_at = time.monotonic()
            wait_for(lambda: kinds("http", "stream_down"), 10, "http's stream_down")
            time.sleep(2.5)
            http.up()
            back_at = time.monotonic()
            wait_for(lambda: len(kinds("http", "stream_up")) == 2, 15, "http back up")
            wait_for(lambda: kinds("rtsp", "new") and len(kinds("http", "new")) >= 1, 15, "alerts")
        finally:
            stop.set()
            thread.join(20)
            http.close()
    assert not thread.is_alive(), "watch did not stop"
    result = box["result"]
    silent_down = kinds("silent", "stream_down")
    assert len(silent_down) == 1 and "timeout" in silent_down[0]["reason"]
    assert not kinds("silent", "stream_up")
    seen_at = next(t for t, e in events if e["source"] == "silent")
    assert seen_at - started < config.open_timeout + 3  # no hang: bounded by the timeouts
    assert len(kinds("http", "stream_down")) == 1 and len(kinds("http", "stream_up")) == 2
    # the RTSP source never noticed: no outage, and frames detected while http was down
    assert not kinds("rtsp", "stream_down")
    counts = [
        (t, row.frames_detected) for t, rows in statuses for row in rows if row.name == "rtsp"
    ]
    before = max(n for t, n in counts if t <= down_at)
    after = max(n for t, n in counts if t <= back_at)
    assert after - before >= 5, counts  # ~3.5 s at 5 fps: 17 on a quiet machine
    for source in ("rtsp", "http"):
        alert = kinds(source, "new")[0]
        assert alert["class"] == "gun" and alert["hits"] >= 3
        assert (config.out / alert["snapshot"]["annotated"]).is_file()
    assert result.interrupted and result.events["stream_down"] == 2
    # every alerted track ended when watch stopped (or when http dropped)
    new_ids = {e["track"] for _, e in events if e["event"] == "new"}
    end_ids = {e["track"] for _, e in events if e["event"] == "end"}
    assert new_ids == end_ids
