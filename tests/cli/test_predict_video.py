"""predict's video path (issue 24): odd videos are predicted or named and skipped, never the
end of the run. Videos are written here with PyAV; the model is a tiny untrained one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_checkpoint

COMMON = ["--workers", "0", "--batch-size", "2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


def raw_video(path: Path, width: int, height: int, frames: int) -> Path:
    """Uncompressed RGB in AVI: any size is valid, 1 px wide included."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for i in range(frames):
            pixels = np.full((height, width, 3), 40 * i % 255, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def good_clip(path: Path, frames: int = 4) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            pixels = np.full((64, 96, 3), 30 + 20 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_one_pixel_wide_video_is_predicted_not_the_end_of_the_run(gunctl, ckpt, tmp_path):
    thin = raw_video(tmp_path / "thin.avi", 1, 64, 3)
    good = good_clip(tmp_path / "good.avi")
    out = tmp_path / "out"
    result = gunctl("predict", thin, good, "--weights", ckpt, "--out", out, *COMMON)
    assert result.exit_code == 0, result.output
    records = lines(out / "predictions.jsonl")
    by_source = {Path(r["source"]).name: [] for r in records}
    for record in records:
        by_source[Path(record["source"]).name].append(record)
    assert [r["frame"] for r in by_source["thin.avi"]] == [0, 1, 2]
    assert {(r["width"], r["height"]) for r in by_source["thin.avi"]} == {(1, 64)}
    assert len(by_source["good.avi"]) == 4
    import av

    with av.open(str(out / "thin.avi")) as container:  # annotated copy: 4:2:0 needs 2 px
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert "Traceback" not in result.output


def test_a_truncated_video_that_opens_but_yields_no_frame_is_named_and_skipped(
    gunctl, ckpt, tmp_path
):
    whole = good_clip(tmp_path / "whole.mkv", frames=20)
    truncated = tmp_path / "cut.mkv"
    truncated.write_bytes(whole.read_bytes()[:600])  # the header, no whole frame
    good = good_clip(tmp_path / "good.avi")
    out = tmp_path / "out"
    result = gunctl("predict", truncated, good, "--weights", ckpt, "--out", out, *COMMON)
    assert result.exit_code == 0, result.output
    problem = [line for line in result.stderr.splitlines() if "cut.mkv" in line]
    assert len(problem) == 1 and "no frame could be decoded" in problem[0], result.stderr
    assert {Path(r["source"]).name for r in lines(out / "predictions.jsonl")} == {"good.avi"}
    assert sorted(p.name for p in out.iterdir()) == ["good.avi", "predictions.jsonl"]
    # alone, it is the "nothing could be read" case: exit 2, nothing left behind
    alone = tmp_path / "alone"
    result = gunctl("predict", truncated, "--weights", ckpt, "--out", alone, *COMMON)
    assert result.exit_code == 2 and "nothing could be read" in result.stderr
    assert not alone.exists() and "Traceback" not in result.output
