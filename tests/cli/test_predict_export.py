"""gunctl predict and gunctl export through the CLI, on real sample images and a tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import jpeg_bytes, tiny_checkpoint
from PIL import Image

COMMON = ["--workers", "0", "--batch-size", "2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


@pytest.fixture
def pictures(tmp_path, sample_data) -> Path:
    """Four real sample images, one of them a folder deeper."""
    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    names = sorted(p.name for p in (sample_data / "Images").iterdir())[:4]
    for i, name in enumerate(names):
        shutil.copy(sample_data / "Images" / name, folder / ("sub" if i == 3 else "") / name)
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_writes_one_line_and_one_annotated_image_each(gunctl, ckpt, pictures, tmp_path):
    out = tmp_path / "out"
    result = gunctl(
        "predict", pictures, "--weights", ckpt, "--out", out, "--score-threshold", "0", *COMMON
    )
    assert result.exit_code == 0, result.output
    records = lines(out / "predictions.jsonl")
    assert len(records) == 4
    for record in records:
        source = Path(record["source"])
        with Image.open(source) as original:
            assert (record["width"], record["height"]) == original.size
        assert record["boxes"] and len(record["boxes"]) == len(record["scores"])
        assert set(record["labels"]) == {"gun"}
        for x1, y1, x2, y2 in record["boxes"]:
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
        with Image.open(out / record["output"]) as drawn:
            assert drawn.size == (record["width"], record["height"])
    assert (out / "pictures" / "sub").is_dir()
    assert "model: " in result.stderr and str(ckpt) in result.stderr
    assert "files: 4" in result.stdout


def test_zip_and_glob_sources(gunctl, ckpt, pictures, tmp_path):
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(pictures.glob("*.jpeg")):
            zf.write(path, f"cam/{path.name}")
        zf.writestr("../../escape.jpeg", jpeg_bytes())
    out = tmp_path / "out"
    pattern = str(pictures / "*.jpeg")
    result = gunctl("predict", archive, pattern, "--weights", ckpt, "--out", out, *COMMON)
    assert result.exit_code == 0, result.output
    records = lines(out / "predictions.jsonl")
    assert [r["member"] for r in records[:3]] == [
        f"cam/{p.name}" for p in sorted(pictures.glob("*.jpeg"))
    ]
    assert len(records) == 6  # 3 from the zip, 3 from the glob
    assert "escape.jpeg: unsafe member left out" in result.stderr
    assert (out / "batch" / "cam").is_dir()


def write_video(path: Path, frames: int, width: int = 160, height: int = 120) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.full((height, width, 3), 40, np.uint8)
            pixels[20:60, 10 + 8 * i : 50 + 8 * i] = (200, 180, 160)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_frames_above_the_pixel_limit_stop_the_video(tmp_path):
    """Each decoded frame is held to the limit, not only the header's size (a stream can
    change its size after the header): frames before the first big one come through."""
    from gunctl.core.video import VideoProblem, frames

    path = tmp_path / "clip.avi"
    write_video(path, 3)
    assert len(list(frames(path, max_pixels=160 * 120))) == 3
    with pytest.raises(VideoProblem, match="frame 0 is 160x120 px, limit 19,199"):
        list(frames(path, max_pixels=160 * 120 - 1))


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_video_frames_are_predicted_and_written(gunctl, ckpt, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_video(clip, 12)
    out = tmp_path / "out"
    result = gunctl("predict", clip, "--weights", ckpt, "--out", out, "--vid-stride", "3", *COMMON)
    assert result.exit_code == 0, result.output
    records = lines(out / "predictions.jsonl")
    assert [r["frame"] for r in records] == [0, 3, 6, 9]
    assert [r["time"] for r in records] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert {(r["width"], r["height"]) for r in records} == {(160, 120)}
    assert count_frames(out / "clip.mp4") == 4
    assert "video frames: 4" in result.stdout


def test_bad_files_are_named_and_the_rest_predicted(gunctl, ckpt, pictures, tmp_path):
    good = sorted(pictures.glob("*.jpeg"))[0].read_bytes()
    (pictures / "truncated.jpeg").write_bytes(good[: len(good) // 3])
    (pictures / "empty.jpg").write_bytes(b"")
    (pictures / "text.png").write_text("not a picture")
    (pictures / "broken.mp4").write_bytes(b"\x00" * 1000)
    outside = tmp_path / "outside.jpeg"
    outside.write_bytes(good)
    (pictures / "link.jpeg").symlink_to(outside)
    out = tmp_path / "out"
    result = gunctl("predict", pictures, "--weights", ckpt, "--out", out, *COMMON)
    assert result.exit_code == 0, result.output
    for name in ("truncated.jpeg", "empty.jpg", "text.png", "broken.mp4", "link.jpeg"):
        assert sum(name in line for line in result.stderr.splitlines()) == 1, (name, result.stderr)
    assert len(lines(out / "predictions.jsonl")) == 4
    assert "Traceback" not in result.output


def test_nothing_readable_exits_2_and_writes_nothing(gunctl, ckpt, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"garbage")
    out = tmp_path / "out"
    result = gunctl(
        "predict", folder, tmp_path / "nope.png", "--weights", ckpt, "--out", out, *COMMON
    )
    assert result.exit_code == 2
    assert "a.jpg" in result.stderr and "nope.png" in result.stderr
    assert "nothing could be read" in result.stderr
    assert not out.exists()


def test_json_lines_on_stdout_only(gunctl, ckpt, pictures, tmp_path):
    result = gunctl(
        "predict",
        pictures,
        "--weights",
        ckpt,
        "--json",
        "--no-save-images",
        "--no-save-json",
        "--out",
        tmp_path / "out",
        *COMMON,
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 4 and all("boxes" in r for r in records)
    assert not (tmp_path / "out").exists()


def test_fail_on_detection(gunctl, ckpt, pictures, tmp_path):
    found = gunctl(
        "predict", pictures, "--weights", ckpt, "--score-threshold", "0", "--fail-on-detection",
        "--no-save-images", "--out", tmp_path / "a", *COMMON,
    )  # fmt: skip
    assert found.exit_code == 1 and "--fail-on-detection" in found.stderr
    assert all(r["boxes"] for r in lines(tmp_path / "a" / "predictions.jsonl"))
    scan = gunctl(
        "predict", pictures, "--weights", ckpt, "--score-threshold", "1", "--json",
        "--no-save-images", "--no-save-json", *COMMON,
    )  # fmt: skip
    empty = [json.loads(line)["source"] for line in scan.stdout.splitlines()]
    empty = [
        s for s, line in zip(empty, scan.stdout.splitlines(), strict=True) if '"boxes": []' in line
    ]
    assert empty, "every image has a box scoring 1.0"
    clean = gunctl(
        "predict", empty[0], "--weights", ckpt, "--score-threshold", "1", "--fail-on-detection",
        "--no-save-images", "--out", tmp_path / "b", *COMMON,
    )  # fmt: skip
    assert clean.exit_code == 0, clean.output
    assert lines(tmp_path / "b" / "predictions.jsonl")[0]["boxes"] == []


def test_refusals(gunctl, ckpt, pictures, tmp_path):
    half = gunctl("predict", pictures, "--weights", ckpt, "--half", "--device", "cpu")
    assert half.exit_code == 2 and "--half needs a CUDA device" in half.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    again = gunctl("predict", pictures, "--weights", ckpt, "--out", taken)
    assert again.exit_code == 2 and "never overwrites" in again.stderr
    assert (taken / "keep.txt").read_text() == "mine"


def test_slim_checkpoint_predicts_alike_and_cannot_resume(gunctl, tmp_path, pictures):
    full = tiny_checkpoint(tmp_path / "full.pth", with_optimizer=True)
    slim = tmp_path / "slim.pth"
    result = gunctl("export", full, "--format", "pth", "--out", slim)
    assert result.exit_code == 0, result.output
    assert slim.stat().st_size <= full.stat().st_size / 2
    for name, path in (("a", full), ("b", slim)):
        ran = gunctl(
            "predict",
            pictures,
            "--weights",
            path,
            "--no-save-images",
            "--out",
            tmp_path / name,
            *COMMON,
        )
        assert ran.exit_code == 0, ran.output
    assert lines(tmp_path / "a" / "predictions.jsonl") == lines(
        tmp_path / "b" / "predictions.jsonl"
    )
    resumed = gunctl("train", "--resume", slim, "--epochs", "2", "--out", tmp_path / "art")
    assert resumed.exit_code == 2 and "weights-only checkpoint cannot resume" in resumed.stderr


RUN_TORCHSCRIPT = """
import json, sys
import numpy as np, torch
import torchvision  # registers the nms and roi_align operators the model calls
from PIL import Image
model = torch.jit.load(sys.argv[1])
out = []
for path in sys.argv[2:]:
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
    boxes, scores, labels = model(image)
    floats = model(image.float() / 255)
    assert torch.allclose(floats[1], scores, atol=1e-5)
    out.append({"boxes": boxes.tolist(), "scores": scores.tolist(), "labels": labels.tolist()})
assert "gunctl" not in sys.modules
print(json.dumps(out))
"""

RUN_ONNX = """
import json, sys
import numpy as np, onnxruntime
from PIL import Image
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
out = []
for path in sys.argv[2:]:
    image = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).copy()
    boxes, scores, labels = session.run(None, {"image": image})
    out.append({"boxes": boxes.tolist(), "scores": scores.tolist(), "labels": labels.tolist()})
assert "gunctl" not in sys.modules
meta = session.get_modelmeta().custom_metadata_map
assert json.loads(meta["class_names"]) == ["background", "gun"]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "runner"),
    [("torchscript", RUN_TORCHSCRIPT), ("onnx", RUN_ONNX)],
    ids=["torchscript", "onnx"],
)
def test_export_matches_predict(gunctl, ckpt, pictures, tmp_path, fmt, runner):
    from gunctl.core.export import compare

    exported = tmp_path / f"model.{fmt}"
    made = gunctl(
        "export", "--weights", ckpt, "--format", fmt, "--out", exported, "--score-threshold", "0.3"
    )
    assert made.exit_code == 0, made.output
    out = tmp_path / "pred"
    # One image per batch: a batch pads its images to one size, which moves scores a little.
    ran = gunctl(
        "predict", pictures, "--weights", ckpt, "--no-save-images", "--out", out,
        "--workers", "0", "--batch-size", "1", "--score-threshold", "0.3",
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    records = lines(out / "predictions.jsonl")
    process = subprocess.run(
        [sys.executable, "-c", runner, str(exported), *(r["source"] for r in records)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    results = json.loads(process.stdout)
    assert sum(len(r["boxes"]) for r in records) > 0
    for record, other in zip(records, results, strict=True):
        box_diff, score_diff = compare(
            record["boxes"], record["scores"], other["boxes"], other["scores"]
        )
        assert box_diff <= 1.0 and score_diff <= 1e-3, (record["source"], box_diff, score_diff)
        names = sorted(["background", "gun"][i] for i in other["labels"])
        assert names == sorted(record["labels"])
