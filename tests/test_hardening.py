"""Bad data, faults and hostile files: each handled as documented, or one line and an exit code.

Every case asserts the exit code, a message fragment, that no traceback was printed, and that
files which were on disk before are untouched.
"""

import io
import json
import os
import pickle
import signal
import time
import zipfile
from pathlib import Path

import pytest
from helpers import (
    TINY_CLI,
    jpeg_bytes,
    run_gunctl,
    share_data,
    start_long_training,
    write_tree,
)
from PIL import Image

from gunctl.core.checkpoint import load_checkpoint


def image_bytes(mode="RGB", fmt="JPEG", size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 100 if mode in ("L", "P", "1") else (100,) * len(mode)).save(buffer, fmt)
    return buffer.getvalue()


GOOD = "1\n5 5 30 30\n"

# name -> (image file name, image bytes or None, label text or None, expected problem kind or None)
CORPUS = {
    "good": ("1.jpeg", jpeg_bytes(), GOOD, None),
    "truncated jpeg": ("2.jpeg", jpeg_bytes()[:200], GOOD, "unreadable_image"),
    "zero-byte image": ("3.jpeg", b"", GOOD, "unreadable_image"),
    "png behind .jpeg": ("4.jpeg", image_bytes(fmt="PNG"), GOOD, "format_mismatch"),
    "grayscale": ("5.jpeg", image_bytes("L"), GOOD, None),
    "cmyk": ("6.jpeg", image_bytes("CMYK"), GOOD, None),
    "palette png": ("7.png", image_bytes("P", "PNG"), GOOD, None),
    "alpha png": ("8.png", image_bytes("RGBA", "PNG"), GOOD, None),
    "decompression bomb": (
        "9.png",
        image_bytes("1", "PNG", (10_000, 6_000)),
        GOOD,
        "image_too_large",
    ),
    "upper-case extension": ("10.JPG", jpeg_bytes(), GOOD, None),
    "missing label": ("11.jpeg", jpeg_bytes(), None, "image_without_label"),
    "label without image": ("12.jpeg", None, GOOD, "label_without_image"),
    "count mismatch": ("13.jpeg", jpeg_bytes(), "3\n5 5 30 30\n", "count_mismatch"),
    "non-numeric line": ("14.jpeg", jpeg_bytes(), "2\n5 5 30 30\nx y 1 2\n", "malformed_line"),
    "float coordinates": ("15.jpeg", jpeg_bytes(), "1\n5.5 5 30.25 30\n", None),
    "negative coordinates": ("16.jpeg", jpeg_bytes(), "1\n-5 -5 30 30\n", "box_clipped"),
    "x2 < x1": ("17.jpeg", jpeg_bytes(), "1\n30 5 5 30\n", "swapped_corners"),
    "zero-area box": ("18.jpeg", jpeg_bytes(), "2\n5 5 30 30\n7 7 7 20\n", "zero_area_box"),
    "box partly outside": ("19.jpeg", jpeg_bytes(), "1\n40 20 90 70\n", "box_clipped"),
    "box wholly outside": (
        "20.jpeg",
        jpeg_bytes(),
        "2\n5 5 30 30\n100 100 120 120\n",
        "box_outside",
    ),
    "empty label file": ("21.jpeg", jpeg_bytes(), "", "empty_label"),
    "zero boxes": ("22.jpeg", jpeg_bytes(), "0\n", None),
    "crlf bom spaces blanks": (
        "23.jpeg",
        jpeg_bytes(),
        "\ufeff1 \r\n\r\n5 5 30 30  \r\n\r\n",
        None,
    ),
    "space and non-ascii name": ("gun ü 24.jpeg", jpeg_bytes(), GOOD, None),
}
USABLE = {
    name
    for name, (_, image, label, kind) in CORPUS.items()
    if image is not None
    and label not in (None, "")
    and kind not in ("unreadable_image", "image_too_large")
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "bad data ü"
    images, labels = {}, {}
    for image_name, data, label, _ in CORPUS.values():
        stem = image_name.rsplit(".", 1)[0]
        if data is not None:
            images[image_name] = data
        if label is not None:
            labels[f"{stem}.txt"] = label
    write_tree(root, images, labels)
    (root / "Images" / "notes.txt").write_text("not an image")
    (root / "Images" / "25.jpeg").symlink_to("/etc/hostname")  # leads outside the source
    return root


def assert_clean_failure(result, code, fragment):
    assert result.returncode == code, result.stderr
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_corpus_ingest_reports_every_case(corpus, tmp_path):
    out = tmp_path / "out é"
    result = run_gunctl("ingest", "--source", corpus, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = {}
    for _, _, _, kind in CORPUS.values():
        if kind:
            expected[kind] = expected.get(kind, 0) + 1
    expected["not_an_image"] = 1
    expected["unsafe_path"] = 1
    assert report["problem_counts"] == expected
    assert report["images"] == len(USABLE)
    assert report["converted"] == 4  # grayscale, CMYK, palette, alpha
    problems = "\n".join(report["problems"])
    for file in (
        "Images/2.jpeg",
        "Images/9.png",
        "Labels/14.txt:3",
        "Labels/16.txt:2",
        "Images/notes.txt",
        "Images/25.jpeg",
        "Labels/12.txt",
    ):
        assert file in problems, file
    written = {p.name for p in (out / "raw" / "Images").iterdir()}
    assert "gun ü 24.jpeg" in written and "25.jpeg" not in written
    assert (out / "raw" / "Labels" / "16.txt").read_text() == "1\n0 0 30 30\n"
    assert (out / "raw" / "Labels" / "15.txt").read_text() == "1\n5.5 5 30.25 30\n"


def test_strict_refuses_and_keeps_the_previous_tree(corpus, tmp_path):
    out = tmp_path / "out"
    assert run_gunctl("ingest", "--source", "demo", "--count", "4", "--out", out).returncode == 0
    before = (out / "raw" / "manifest.json").read_bytes()
    result = run_gunctl("ingest", "--source", corpus, "--out", out, "--strict", "--force")
    assert_clean_failure(result, 2, "problem(s) under --strict")
    assert (out / "raw" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["raw"]  # no staging folder left


@pytest.mark.slow
def test_corpus_trains_and_validates_after_repair(corpus, tmp_path):
    out = tmp_path / "out"
    assert run_gunctl("ingest", "--source", corpus, "--out", out).returncode == 0
    assert run_gunctl("split", "--out", out).returncode == 0
    trained = run_gunctl(
        "train", "--epochs", "1", "--out", out, "--run-name", "r", "--quiet", *TINY_CLI
    )
    assert trained.returncode == 0, trained.stderr
    scored = run_gunctl(
        "validate", out / "runs" / "r" / "last.pth", "--out", out, "--split", "all", "--json"
    )
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["metrics"]["images"] == len(USABLE)


def make_zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    "members, symlink, fragment",
    [
        (
            {"Images/1.jpeg": jpeg_bytes(), "Labels/1.txt": GOOD.encode(), "../evil.txt": b"x"},
            None,
            "'../evil.txt'",
        ),
        (
            {
                "Images/1.jpeg": jpeg_bytes(),
                "Labels/1.txt": GOOD.encode(),
                "/tmp/gunctl-evil": b"x",
            },
            None,
            "'/tmp/gunctl-evil'",
        ),
        (
            {"Images/1.jpeg": jpeg_bytes(), "Labels/1.txt": GOOD.encode()},
            "Images/2.jpeg",
            "symbolic links",
        ),
    ],
    ids=["zip-slip", "absolute", "symlink"],
)
def test_hostile_zips_are_refused_by_name(tmp_path, members, symlink, fragment):
    out = tmp_path / "out"
    assert run_gunctl("ingest", "--source", "demo", "--count", "3", "--out", out).returncode == 0
    before = (out / "raw" / "manifest.json").read_bytes()
    archive = make_zip(tmp_path / "hostile.zip", members, symlink)
    result = run_gunctl("ingest", "--source", archive, "--out", out, "--force")
    assert_clean_failure(result, 2, fragment)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/gunctl-evil").exists()
    assert (out / "raw" / "manifest.json").read_bytes() == before


def evil_file(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"format": "gunctl-checkpoint", "schema": 1, "x": Evil()}))
    return path


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "artifacts"
    assert run_gunctl("ingest", "--source", "demo", "--count", "12", "--out", out).returncode == 0
    assert run_gunctl("split", "--out", out).returncode == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate", "resume", "weights"])
def test_malicious_checkpoints_never_run(demo_out, tmp_path, command):
    marker = tmp_path / "pwned"
    evil = evil_file(tmp_path / "evil.pth", marker)
    args = {
        "validate": ["validate", evil, "--out", demo_out],
        "resume": ["train", "--resume", evil, "--out", demo_out, *TINY_CLI],
        "weights": [
            "train",
            "--out",
            demo_out,
            "--run-name",
            "w",
            *TINY_CLI[:2],
            "--weights",
            evil,
            *TINY_CLI[4:],
        ],
    }[command]
    result = run_gunctl(*args)
    assert_clean_failure(result, 2, "unsafe to load")
    assert not marker.exists()


@pytest.mark.slow
def test_kill_9_mid_epoch_keeps_the_last_checkpoint_and_resume_goes_on(demo_out, tmp_path):
    out = share_data(tmp_path / "artifacts", demo_out)
    process, last = start_long_training(out, "killed")

    second = run_gunctl(
        "train",
        "--epochs",
        "2",
        "--out",
        out,
        "--run-name",
        "killed",
        "--resume",
        "killed",
        *TINY_CLI,
    )
    assert_clean_failure(second, 2, "run in use by pid")  # a second writer is refused

    time.sleep(1.5)  # into the next epoch, maybe into a checkpoint write
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    checkpoint = load_checkpoint(last)  # intact: atomic writes
    done = checkpoint["epoch"]
    assert done >= 1 and checkpoint["interrupted"] is False
    resumed = run_gunctl(
        "train", "--resume", "killed", "--epochs", done + 1, "--out", out, "--quiet"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(last)["epoch"] == done + 1
    assert not list((out / "runs" / "killed").glob(".*.tmp"))  # half-written files cleared


@pytest.mark.slow
def test_unwritable_out_is_refused_before_training(demo_out, tmp_path):
    out = share_data(tmp_path / "artifacts", demo_out)
    (out / "runs").write_text("a file where the runs folder should be")  # cannot hold runs
    result = run_gunctl("train", "--out", out, "--run-name", "x", *TINY_CLI)
    assert_clean_failure(result, 2, "cannot write")
    assert (out / "runs").read_text().startswith("a file")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    result = run_gunctl("ingest", "--source", "demo", "--out", blocker / "artifacts")
    assert_clean_failure(result, 2, "cannot write")


def test_disk_full_is_refused_before_training(demo_out, gunctl, monkeypatch, tmp_path):
    import shutil

    out = share_data(tmp_path / "artifacts", demo_out)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024 * 1024))
    result = gunctl("train", "--out", out, "--run-name", "full", *TINY_CLI)
    assert result.exit_code == 2
    assert "MiB free, checkpoints need about" in result.stderr
    assert not (out / "runs" / "full" / "last.pth").exists()


@pytest.mark.slow
def test_failed_checkpoint_write_keeps_the_previous_one(demo_out, gunctl, monkeypatch, tmp_path):
    import torch

    out = share_data(tmp_path / "artifacts", demo_out)
    real_save, calls = torch.save, []

    def failing_second_save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            handle.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_save)
    result = gunctl("train", "--epochs", "3", "--out", out, "--run-name", "f", *TINY_CLI)
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr and "last.pth" in result.stderr
    monkeypatch.setattr(torch, "save", real_save)
    checkpoint = load_checkpoint(out / "runs" / "f" / "last.pth")
    assert checkpoint["epoch"] == 1


@pytest.mark.slow
def test_out_of_memory_says_what_to_do_and_saves(demo_out, tmp_path):
    import torch
    from helpers import tiny_config

    from gunctl.config import Layout
    from gunctl.core.callbacks import Callback
    from gunctl.core.trainer import fit
    from gunctl.errors import TrainingError

    class OutOfMemory(Callback):
        def on_step_end(self, state, step):
            if state.epoch == 1 and step.batch == 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    out = share_data(tmp_path / "artifacts", demo_out)
    with pytest.raises(
        TrainingError, match="out of GPU memory at epoch 2.*--batch-size.*--min-size"
    ):
        fit(tiny_config(Layout(out), epochs=3), [OutOfMemory()])
    checkpoint = load_checkpoint(out / "runs" / "tiny" / "last.pth")
    assert checkpoint["interrupted"] is True and checkpoint["epoch"] == 1


def test_no_shell_no_eval_in_the_package():
    import re

    package = Path(__file__).resolve().parents[1] / "gunctl"
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "shell=True" not in text, path
        assert not re.search(r"(?<![.\w])(eval|exec)\(", text), path  # the builtins, not .eval()
        assert "os.system" not in text and "pickle.load" not in text, path
