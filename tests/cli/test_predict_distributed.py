"""predict under torchrun (issue 28): two CPU processes (gloo) share the inputs out and leave
one predictions.jsonl in input order, equal to one process's, and one summary; a rank that
fails leaves no predictions.jsonl and the job ends non-zero with one line. Real torchrun, a
tiny untrained model, images and a clip written here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_gunctl, tiny_checkpoint
from PIL import Image
from test_predict_video import good_clip

from gunctl.core.predict_dist import merge_parts, part_name, partition

SIZES = [(96, 64), (64, 96), (80, 80), (120, 72), (72, 120), (100, 60)]
CLIP_FRAMES = 5
# One thread in each process, as torchrun sets, and batches of one image: the two runs then
# compute each image alike, so their detections differ at most in the last digits.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary(stdout: str) -> dict[str, str]:
    """The summary's ``what: value`` lines (stdout is not a terminal here)."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def pictures(folder: Path, sizes) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ckpt(module_tmp) -> Path:
    return tiny_checkpoint(module_tmp / "tiny.pth")


@pytest.fixture(scope="module")
def runs(module_tmp, ckpt):
    """The same inputs predicted by one process and by torchrun with two."""
    pics = module_tmp / "pics"
    pictures(pics, SIZES)
    (pics / "3b_broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    clip = good_clip(module_tmp / "clip.avi", frames=CLIP_FRAMES)
    # two files of one name, named on the command line: dealt to different ranks (the clip
    # weighs 5, so rank 1 takes the first 5 images, then they go in turn), named apart
    twins = [pictures(module_tmp / "twins" / side, SIZES[:1])[0] for side in ("a", "b")]
    common = [pics, clip, *twins, "--weights", ckpt, "--workers", "0", "--batch-size", "1"]
    one = run_gunctl("predict", *common, "--out", module_tmp / "one", env=ENV)
    command = ["--standalone", "--nproc_per_node=2", "-m", "gunctl", "predict", *common]
    two = subprocess.run(
        [*torchrun(), *map(str, [*command, "--out", module_tmp / "two"])],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    return module_tmp, pics, clip, twins, one, two


@pytest.mark.slow
def test_two_ranks_leave_one_predictions_file_in_input_order(runs):
    root, pics, clip, twins, one, two = runs
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-3000:]
    merged = lines(root / "two" / "predictions.jsonl")
    expected = [(str(pics / f"{i}.png"), None) for i in range(len(SIZES))]  # the folder, sorted
    expected += [(str(twin), None) for twin in twins]  # the images named after it
    expected += [(str(clip), frame) for frame in range(CLIP_FRAMES)]  # then the video, in order
    assert [(r["source"], r["frame"]) for r in merged] == expected
    assert [(r["width"], r["height"]) for r in merged[: len(SIZES)]] == SIZES
    assert [r["output"] for r in merged[len(SIZES) : len(SIZES) + 2]] == ["0.png", "0_2.png"]
    single = lines(root / "one" / "predictions.jsonl")
    assert len(single) == len(merged)
    assert sum(len(r["boxes"]) for r in merged) > 0  # the comparison below compares something
    for a, b in zip(single, merged, strict=True):
        where = (b["source"], b["frame"])
        for key in ("source", "member", "frame", "time", "width", "height", "labels", "output"):
            assert a[key] == b[key], (where, key)
        assert np.allclose(a["boxes"], b["boxes"], atol=1.0, rtol=0), where
        assert np.allclose(a["scores"], b["scores"], atol=1e-3, rtol=0), where


@pytest.mark.slow
def test_one_summary_with_the_whole_jobs_totals_and_no_parts_left(runs):
    root, _, _, twins, one, two = runs
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("files: ") == 1  # rank 0 alone reports
    told = summary(two.stdout)
    merged = lines(root / "two" / "predictions.jsonl")
    assert told["files"] == str(len(SIZES) + len(twins) + 1)  # eight images and the clip
    assert told["video frames"] == str(CLIP_FRAMES)
    assert told["detections"] == str(sum(len(r["boxes"]) for r in merged))
    assert told["images or frames with a detection"] == str(sum(bool(r["boxes"]) for r in merged))
    assert told["problems"] == "1"
    assert told["processes"] == "2"
    assert told["detections"] == summary(one.stdout)["detections"]
    assert two.stderr.count("3b_broken.jpg") == 1  # named once, by rank 0, for rank 0 or 1
    assert "Traceback" not in two.stderr
    written = sorted(p.relative_to(root / "two") for p in (root / "two").rglob("*"))
    assert {Path("0.png"), Path("0_2.png"), Path("clip.avi")} <= set(written)
    assert written == sorted(p.relative_to(root / "one") for p in (root / "one").rglob("*"))
    assert not [p for p in (root / "two").rglob(".*")]  # no part or temporary file


@pytest.mark.slow
def test_a_rank_that_cannot_write_ends_the_job_with_one_line_and_no_predictions(module_tmp, ckpt):
    """The fourth image goes to rank 1 (images are dealt in turn); its annotated copy's name is
    too long for the file system (a 254-character name gets .jpg added)."""
    folder = module_tmp / "long"
    a, b, c, d = pictures(folder, SIZES[:4])
    too_long = d.rename(folder / ("x" * 250 + ".img"))
    out = module_tmp / "failed"
    result = run_gunctl(
        "predict", a, b, c, too_long, "--weights", ckpt, "--out", out, "--workers", "0",
        "--nproc", "2", env=ENV,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write (File name too long)" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert not (out / "predictions.jsonl").exists()
    assert not list(out.glob("predictions*"))


@pytest.mark.slow
def test_a_refusal_before_any_work_is_said_once_and_nothing_is_touched(module_tmp, ckpt):
    """Both ranks stop, rank 0 alone says why; the existing folder is left as it was."""
    out = module_tmp / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    image = pictures(module_tmp / "one-image", SIZES[:1])[0]
    result = run_gunctl(
        "predict", image, "--weights", ckpt, "--out", out, "--workers", "0", "--nproc", "2",
        env=ENV,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out}: already exists; predict never overwrites, pick a new --out"]
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def _rank_pid(parent: int, rank: int) -> int | None:
    """The process of torchrun's worker ``rank`` (a child of ``parent``), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_leaves_no_predictions_file(module_tmp, ckpt):
    """Rank 1 is killed while it predicts its clip: torchrun ends rank 0, nothing is merged."""
    clips = [good_clip(module_tmp / f"long{i}.avi", frames=300) for i in range(2)]
    out = module_tmp / "killed"
    command = [*torchrun(), "--standalone", "--nproc_per_node=2", "-m", "gunctl", "predict"]
    command += [*map(str, clips), "--weights", str(ckpt), "--out", str(out), "--batch-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline, pid = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            pid = pid or _rank_pid(process.pid, 1)
            if pid and list(out.glob(f".{part_name(1, 2)}.*.tmp")):  # rank 1 is writing
                break
            time.sleep(0.1)
        assert pid and process.poll() is None, "rank 1 never started writing"
        os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert not (out / "predictions.jsonl").exists()
    assert not (out / part_name(1, 2)).exists()  # rank 1's part never completed


def test_partition_deals_equal_items_in_turn_and_heavy_ones_first():
    assert partition([1] * 5, 2) == [[0, 2, 4], [1, 3]]
    # a video of 6 frames, then four images: the video alone on rank 0, the images beside it
    assert partition([6, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]
    # the video first (rank 0), images to rank 1 until it weighs as much, then in turn
    assert partition([1, 6, 1, 1, 1, 1, 1, 1, 1], 2) == [[1, 7], [0, 2, 3, 4, 5, 6, 8]]
    assert partition([2, 3, 4], 3) == [[2], [1], [0]]
    assert partition([1], 3) == [[0], [], []]  # more ranks than items: some have none


def test_merge_puts_the_parts_lines_in_input_order_and_removes_nothing_else(tmp_path):
    (tmp_path / part_name(0, 2)).write_text('0 {"n": 0}\n2 {"n": 2}\n2 {"n": 3}\n5 {"n": 6}\n')
    (tmp_path / part_name(1, 2)).write_text('1 {"n": 1}\n3 {"n": 4}\n4 {"n": 5}\n')
    seen = []
    merge_parts(tmp_path, 2, seen.append)
    assert [r["n"] for r in lines(tmp_path / "predictions.jsonl")] == list(range(7))
    assert [r["n"] for r in seen] == list(range(7))
