"""The webhook and --exec sinks against real receivers on 127.0.0.1, and events.jsonl."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path

import pytest
from watchkit import WebhookReceiver

from gunctl.core.watch.events import EventLog, new_event, read_events
from gunctl.core.watch.sinks import SIGNATURE_HEADER, ExecSink, WebhookSink

SECRET = "s3cret-for-the-test"


def test_webhook_slow_then_failing_then_back_delivers_each_alert_once_and_signed():
    """Receiver: 2 slow answers (1 s), then 3 x HTTP 500, then 200s. Eight alerts put at once
    never block the caller; each arrives with a 200 exactly once, in order, each body signed
    with HMAC-SHA256 of the secret (recomputed here), the event id as Idempotency-Key."""
    receiver = WebhookReceiver(slow=2, delay=1.0, failing=3)
    sink = WebhookSink(receiver.url, SECRET, timeout=5.0, retries=6, outbox=100)
    events = [new_event("new", "cam1", track=i, score=0.9) for i in range(8)]
    started = time.monotonic()
    for event in events:
        sink.put(event)
    assert time.monotonic() - started < 0.1  # the outbox takes them; detection goes on
    deadline = time.monotonic() + 30
    while len(receiver.accepted()) < len(events) and time.monotonic() < deadline:
        time.sleep(0.1)
    sink.close(5)
    receiver.close()
    assert [e["id"] for e in receiver.accepted()] == [e["id"] for e in events]
    statuses = [status for status, _, _ in receiver.requests]
    assert statuses.count(500) == 3 and len(statuses) == len(events) + 3
    for _, headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
        assert headers["Idempotency-Key"] == json.loads(body)["id"]
        assert headers["X-Gunctl-Event"] == "new"
    assert sink.sent == len(events) and sink.failed == 0 and sink.dropped == 0


def test_webhook_outbox_is_bounded_and_bodies_are_unsigned_without_a_secret():
    receiver = WebhookReceiver(slow=1, delay=1.5, failing=0)
    sink = WebhookSink(receiver.url, None, timeout=5.0, retries=3, outbox=2)
    events = [new_event("new", "cam", track=i) for i in range(5)]
    for event in events:
        sink.put(event)  # the first is on its way (slow); of the 4 others the outbox keeps 2
    sink.close(10)
    receiver.close()
    assert sink.dropped >= 2
    assert [e["id"] for e in receiver.accepted()][-2:] == [e["id"] for e in events[-2:]]
    assert all(SIGNATURE_HEADER not in headers for _, headers, _ in receiver.requests)


def test_exec_runs_without_a_shell_with_the_event_on_stdin(tmp_path: Path):
    target = tmp_path / "got; touch pwned"  # a shell would run the second half
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write(os.environ['GUNCTL_EVENT'] + ' ' + sys.stdin.read() + '\\n')\n"
    )
    sink = ExecSink(f"{sys.executable} {script} '{target}'", outbox=10)
    events = [new_event("new", "cam", track=1), new_event("end", "cam", track=1)]
    for event in events:
        sink.put(event)
    sink.close(20)
    lines = target.read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["new", "end"]
    assert [json.loads(line.split(" ", 1)[1])["id"] for line in lines] == [e["id"] for e in events]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert sink.sent == 2


def test_events_jsonl_appends_whole_lines_and_a_cut_last_line_is_skipped(tmp_path: Path):
    log = EventLog(tmp_path)
    first = [new_event("stream_up", "cam"), new_event("new", "cam", track=1)]
    for event in first:
        log.write(event)
    log.close()
    log = EventLog(tmp_path)  # a second run appends
    log.write(new_event("end", "cam", track=1))
    log.close()
    with open(tmp_path / "events.jsonl", "ab") as handle:
        handle.write(b'{"id": "cut by a kil')  # what a kill -9 in mid-write could leave
    events = read_events(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["stream_up", "new", "end"]
    assert events[0]["id"] == first[0]["id"]


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="O_NOFOLLOW")
def test_events_jsonl_is_never_written_through_a_symlink(tmp_path: Path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").symlink_to(outside)
    with pytest.raises(OSError):
        EventLog(out)
    assert outside.read_text() == "keep\n"


def test_snapshots_are_never_written_through_a_symlinked_folder(tmp_path: Path):
    import numpy as np

    from gunctl.core.watch.events import Snapshots

    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "snapshots").symlink_to(outside, target_is_directory=True)
    pixels = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(OSError, match="symlink"):
        Snapshots(out, "run1").save("cam", 1, pixels, (5, 5, 20, 20), "gun", 0.9)
    assert list(outside.iterdir()) == []
    written = Snapshots(tmp_path / "ok", "run1").save("cam", 1, pixels, (5, 5, 20, 20), "gun", 0.9)
    assert written == {
        "clean": "snapshots/run1/cam-1.jpg",
        "annotated": "snapshots/run1/cam-1-annotated.jpg",
    }


def test_watch_delivers_every_alert_once_to_a_slow_then_failing_webhook(tmp_path: Path):
    """The whole loop: a clip with two appearances; the receiver holds its first answer until
    the second alert exists (detection must go on while the webhook waits), then answers two
    500s. At exit every new/end event was accepted once, in order, signed."""
    from watchkit import RedDetector, background, red_frames, write_clip

    from gunctl.config import WatchConfig
    from gunctl.core.watch.runner import watch

    base = background(None)
    frames = red_frames(base, 60, range(10, 30)) + red_frames(base, 40, range(10, 30))
    clip = write_clip(tmp_path / "cam.mkv", frames)
    receiver = WebhookReceiver(slow=1, delay=60, failing=2)
    pending_at_second_alert = []

    def on_event(event):
        if event["event"] == "new" and event["track"] != first.setdefault("track", event["track"]):
            pending_at_second_alert.append(not receiver.answered)
            receiver.release.set()

    first: dict = {}
    config = WatchConfig(
        sources=(str(clip),),
        out=tmp_path / "out",
        cooldown=0.0,
        webhook=receiver.url,
        webhook_secret=SECRET,
        webhook_timeout=90.0,
        notify=("new", "end"),
    )
    watch(config, detector=RedDetector(), on_event=on_event)
    receiver.close()
    assert pending_at_second_alert == [True]  # the first POST was still waiting
    events = read_events(config.out / "events.jsonl")
    sent = [e for e in events if e["event"] in ("new", "end")]
    assert [e["event"] for e in sent] == ["new", "end", "new", "end"]
    assert [e["id"] for e in receiver.accepted()] == [e["id"] for e in sent]
    assert [status for status, _, _ in receiver.requests].count(500) == 2
    for _, headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == expected
