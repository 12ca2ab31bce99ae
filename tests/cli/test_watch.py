"""gunctl watch through the CLI: a clip with a tiny model, bad usage, SIGTERM and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core" / "watch"))
from watchkit import background, red_frames, write_clip  # noqa: E402

from gunctl.core.watch.events import read_events  # noqa: E402

GUNCTL = Path(sys.executable).with_name("gunctl")
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = Path(os.environ.get("GUNCTL_SAMPLE_DATA", ROOT.parent / "shared" / "data" / "guns-sample"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """4 s at 10 fps, 160x120, a sample image as the scene (grey without the sample)."""
    folder = tmp_path_factory.mktemp("clip")
    frames = red_frames(background(SAMPLE, (160, 120), index=5), 40, range(10, 30))
    return write_clip(folder / "door.mkv", frames)


def test_watch_a_file_writes_tracked_events_and_snapshots(gunctl, ckpt, clip, tmp_path):
    """With --score-threshold 0.5 and --min-hits 1 the untrained model's boxes alert at once:
    what is checked is the plumbing (events whole and paired, snapshots, the summary)."""
    out = tmp_path / "out"
    result = gunctl(
        "watch", clip, "--weights", ckpt, "--out", out, "--name", "door",
        "--score-threshold", "0.5", "--alert-threshold", "0", "--min-hits", "1",
        "--cooldown", "0", "--device", "cpu", "--detect-fps", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    events = read_events(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stream_up" and kinds[-1] == "stream_end" and "new" in kinds
    assert {e["source"] for e in events} == {"door"}
    new = [e for e in events if e["event"] == "new"]
    ends = [e for e in events if e["event"] == "end"]
    assert sorted(e["track"] for e in new) == sorted(e["track"] for e in ends)
    for event in new:
        assert event["hits"] >= 1 and 0 <= event["score"] <= 1 and len(event["box"]) == 4
        for kind in ("clean", "annotated"):
            assert (out / event["snapshot"][kind]).is_file()
    assert f"alerts: {len(new)}" in result.stdout
    assert "door new: track" in result.stderr  # one plain line per event (not a terminal)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zone", "door:1,2,3"], "--zone"),
        (["--detect-fps", "0"], "--detect-fps"),
        (["--min-hits", "0"], "--min-hits"),
        (["--webhook-secret", "x"], "--webhook-secret needs --webhook"),
        (["--notify", "new,bogus"], "--notify bogus"),
        (["--name", "a/b"], "--name"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(gunctl, ckpt, clip, args, message):
    result = gunctl("watch", clip, "--weights", ckpt, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_bad_sources_are_refused_before_anything_runs(gunctl, ckpt, tmp_path):
    fifo = tmp_path / "cam.mp4"
    os.mkfifo(fifo)
    for source, message in (
        (fifo, "a FIFO"),
        (tmp_path / "missing.mp4", "missing.mp4"),
        ("ftp://127.0.0.1/cam", "unsupported scheme ftp://"),
    ):
        result = gunctl("watch", source, "--weights", ckpt, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 2000)
    result = gunctl("watch", junk, "--weights", ckpt, "--out", tmp_path / "out2")
    assert result.exit_code == 2, result.output
    assert "nothing could be read (junk: cannot open" in result.stderr
    assert "Traceback" not in result.output


def start(ckpt: Path, clip: Path, out: Path) -> subprocess.Popen:
    """gunctl watch in its own process, reading the clip in real time, looped by naming it
    several times (sources run at once)."""
    return subprocess.Popen(
        [
            str(GUNCTL), "watch", str(clip), str(clip), "--weights", str(ckpt),
            "--out", str(out), "--realtime", "--score-threshold", "0.5",
            "--alert-threshold", "0", "--min-hits", "1", "--cooldown", "0",
            "--device", "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def wait_for_alert(process: subprocess.Popen, events: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if events.exists() and b'"event":"new"' in events.read_bytes():
            return
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no alert: {process.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_sigterm_ends_the_tracks_and_kill_9_leaves_a_readable_events_file(ckpt, clip, tmp_path):
    """Two processes at once (half the wall time): one gets SIGTERM, the other SIGKILL."""
    term, killed = tmp_path / "term", tmp_path / "killed"
    processes = {out: start(ckpt, clip, out) for out in (term, killed)}
    for out, process in processes.items():
        wait_for_alert(process, out / "events.jsonl")
    processes[killed].kill()  # SIGKILL: no handler runs
    processes[term].send_signal(signal.SIGTERM)
    processes[killed].communicate(timeout=30)
    stdout, stderr = processes[term].communicate(timeout=60)

    assert processes[term].returncode == 0, stderr
    events = read_events(term / "events.jsonl")
    new = {e["track"] for e in events if e["event"] == "new"}
    assert new and new == {e["track"] for e in events if e["event"] == "end"}
    assert "alerts:" in stdout and "Traceback" not in stderr

    data = (killed / "events.jsonl").read_bytes()
    events = read_events(killed / "events.jsonl")
    assert data.endswith(b"\n")  # each event was flushed whole before the next
    assert len(events) == data.count(b"\n") and any(e["event"] == "new" for e in events)
