"""Bad data, faults and hostile files: each handled as documented, or one line and an exit code.

Every case asserts the exit code, a message fragment, that no traceback was printed, and that
files which were on disk before are untouched.
"""

import io
import json
import os
import pickle
import signal
import subprocess
import sys
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
    assert sorted(p.name for p in out.iterdir()) == [".raw.lock", "raw"]  # no staging left


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


# --- second pass (issue 10): untrusted names, paths, state files, archives and terminals ------


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every file, folder and link under ``root`` (except ``skip`` and lock files) with its
    content's hash."""
    import hashlib

    found = {}
    for path in sorted(root.rglob("*")):
        if path.name in (".lock", ".raw.lock") or any(p == path or p in path.parents for p in skip):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "dir"
    return found


def assert_one_line(result, code, *fragments):
    """Exit ``code``, exactly one error line holding every fragment, no traceback."""
    output = result.stderr + result.stdout
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def demo_copy(demo_out, tmp_path) -> Path:
    """A private copy of the small demo data set and its split, beside a sibling folder."""
    import shutil

    out = tmp_path / "artifacts"
    shutil.copytree(demo_out, out, ignore=shutil.ignore_patterns(".raw.lock", "runs"))
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("must not change")
    return out


def crafted_checkpoint(path: Path, **fields) -> Path:
    """A checkpoint in gunctl's format with the given fields (what an attacker can write)."""
    from helpers import tiny_config

    from gunctl.config import Layout, to_dict
    from gunctl.core.checkpoint import save_checkpoint

    config = to_dict(tiny_config(Layout(path.parent)))
    config.pop("layout")
    payload = {"model": {}, "config": config, "epoch": 1, "class_names": ["background", "gun"]}
    payload.update(fields)
    save_checkpoint(path, payload)
    return path


# 1. names that become paths


@pytest.mark.slow  # spawns gunctl processes that import torch
@pytest.mark.parametrize(
    "name", ["../../escaped", "/tmp/gunctl-abs-run", "a/b", "..", "x\ny", "x\x1b]0;pwned\x07[/]"]
)
def test_run_names_never_leave_the_runs_folder(demo_copy, tmp_path, name):
    before = snapshot(tmp_path, skip=(demo_copy,))
    result = run_gunctl("train", "--out", demo_copy, "--run-name", name, *TINY_CLI)
    assert_one_line(result, 2, "run name", "refused")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr  # shown as \x1b, \x07
    assert snapshot(tmp_path, skip=(demo_copy,)) == before
    assert not Path("/tmp/gunctl-abs-run").exists()
    assert not (demo_copy / "runs").exists() or not any((demo_copy / "runs").iterdir())


@pytest.mark.slow  # spawns gunctl processes that import torch
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/gunctl-abs-run", ".hidden"])
def test_a_checkpoints_run_name_never_becomes_a_path(demo_copy, tmp_path, name):
    evil = crafted_checkpoint(tmp_path / "sibling" / "evil.pth", run_name=name)
    before = snapshot(tmp_path, skip=(demo_copy,))
    result = run_gunctl("train", "--resume", evil, "--epochs", "2", "--out", demo_copy)
    assert_one_line(result, 2, "evil.pth", "run_name")
    assert snapshot(tmp_path, skip=(demo_copy,)) == before
    assert not Path("/tmp/gunctl-abs-run").exists()


# 2. a checkpoint from elsewhere never overwrites another run of the same name


@pytest.mark.slow  # spawns gunctl processes that import torch
def test_resuming_a_foreign_checkpoint_never_overwrites_a_run(demo_copy, tmp_path):
    ours = crafted_checkpoint(demo_copy / "runs" / "r" / "last.pth", run_name="r", run_id="a" * 32)
    foreign = crafted_checkpoint(tmp_path / "sibling" / "r.pth", run_name="r", run_id="b" * 32)
    before = snapshot(tmp_path)
    result = run_gunctl("train", "--resume", foreign, "--epochs", "2", "--out", demo_copy)
    assert_one_line(result, 2, str(ours.parent), "holds another run", "--out")
    assert snapshot(tmp_path) == before


# 3. only JPEG and PNG decoders see untrusted bytes


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\nnewpath 0 0 moveto showpage\n"


def test_only_jpeg_and_png_are_ever_opened(tmp_path):
    marker = tmp_path / "ghostscript-ran"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("gs", "gswin32c", "gswin64c"):
        (fake_bin / tool).write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    source = write_tree(
        tmp_path / "src",
        {
            "1.jpeg": jpeg_bytes(),
            "2.jpeg": EPS,
            "3.jpg": image_bytes(fmt="GIF"),
            "4.png": image_bytes(fmt="TIFF"),
            "5.jpeg": image_bytes(fmt="BMP"),
        },
        {f"{i}.txt": GOOD for i in range(1, 6)},
    )
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    result = run_gunctl("ingest", "--source", source, "--out", tmp_path / "out", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 1 and report["problem_counts"] == {"unreadable_image": 4}
    for name in ("Images/2.jpeg", "Images/3.jpg", "Images/4.png", "Images/5.jpeg"):
        assert f"{name}: not a JPEG or PNG image" in "\n".join(report["problems"])
    assert not marker.exists()  # Ghostscript was never started


# 4. raw/ is locked, and its replacement survives being killed


def test_raw_is_locked_while_read_and_while_replaced(demo_copy, tmp_path):
    from gunctl.config import Layout
    from gunctl.core.rawlock import RawLock

    before = snapshot(tmp_path)
    with RawLock(Layout(demo_copy), exclusive=False):  # as a running train or validate holds it
        result = run_gunctl(
            "ingest", "--source", "demo", "--count", "3", "--out", demo_copy, "--force"
        )
        assert_one_line(result, 2, str(demo_copy / "raw"), "in use by another gunctl command")
    with RawLock(Layout(demo_copy), exclusive=True, command="gunctl ingest"):  # as an ingest
        result = run_gunctl("split", "--out", demo_copy)
        assert_one_line(result, 2, str(demo_copy / "raw"), "being replaced by gunctl ingest")
        second = run_gunctl(
            "ingest", "--source", "demo", "--count", "3", "--out", demo_copy, "--force"
        )
        assert_one_line(second, 2, "in use")
    assert snapshot(tmp_path) == before


def test_an_interrupted_swap_never_loses_the_old_raw(demo_copy, tmp_path):
    manifest = (demo_copy / "raw" / "manifest.json").read_bytes()
    # The state that kill -9 between the two renames of `ingest --force` leaves behind:
    os.rename(demo_copy / "raw", demo_copy / ".raw-old")
    (demo_copy / ".raw-staging-999999-x" / "Images").mkdir(parents=True)
    failing = run_gunctl("ingest", "--source", tmp_path / "missing", "--out", demo_copy, "--force")
    assert_one_line(failing, 2, "missing")
    assert "restored" in failing.stderr
    assert (demo_copy / "raw" / "manifest.json").read_bytes() == manifest
    assert not (demo_copy / ".raw-old").exists()
    assert not (demo_copy / ".raw-staging-999999-x").exists()
    os.rename(demo_copy / "raw", demo_copy / ".raw-old")  # readers restore it too
    assert run_gunctl("split", "--out", demo_copy).returncode == 0
    assert (demo_copy / "raw" / "manifest.json").read_bytes() == manifest


@pytest.mark.slow
def test_kill_9_during_ingest_force_never_loses_raw(tmp_path, sample_data):
    out = tmp_path / "out"
    assert run_gunctl("ingest", "--source", "demo", "--count", "5", "--out", out).returncode == 0
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5, 1.8):
        process = subprocess.Popen(
            [sys.executable, "-m", "gunctl", "ingest", "--source", sample_data, "--out", out]
            + ["--force", "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert (out / "raw").exists() or (out / ".raw-old").exists()
        result = run_gunctl("split", "--out", out, "--json")
        assert result.returncode == 0, result.stderr
        images = json.loads(result.stdout)
        assert images["train"]["images"] + images["val"]["images"] in (5, 300)


@pytest.mark.slow  # spawns gunctl processes that import torch
def test_train_refuses_a_split_of_other_data(demo_copy, tmp_path):
    source = write_tree(tmp_path / "src", {"1.jpeg": jpeg_bytes()}, {"1.txt": GOOD})
    write_tree(source, {"2.jpeg": jpeg_bytes()}, {"2.txt": GOOD})
    result = run_gunctl("ingest", "--source", source, "--out", demo_copy, "--force", "--quiet")
    assert result.returncode == 0, result.stderr
    before = snapshot(tmp_path)
    result = run_gunctl("train", "--out", demo_copy, "--run-name", "stale", *TINY_CLI)
    assert_one_line(result, 2, "split.json", "made from other data", "gunctl split")
    assert snapshot(tmp_path, skip=(demo_copy / "runs",)) == before


@pytest.mark.slow  # spawns gunctl processes that import torch
def test_a_file_changed_after_ingest_is_refused(demo_copy, tmp_path):
    victim = sorted((demo_copy / "raw" / "Labels").iterdir())[0]
    victim.write_text("1\n0 0 5 5\n")
    before = snapshot(tmp_path)
    for args in (["split", "--out", demo_copy], ["train", "--out", demo_copy, *TINY_CLI]):
        result = run_gunctl(*args)
        assert_one_line(result, 2, str(victim), "changed since ingest")
    assert snapshot(tmp_path, skip=(demo_copy / "runs",)) == before


def test_force_never_replaces_a_folder_that_gunctl_did_not_write(tmp_path):
    out = tmp_path / "out"
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    result = run_gunctl("ingest", "--source", "demo", "--count", "3", "--out", out, "--force")
    assert_one_line(result, 2, str(out / "raw"), "not a gunctl data tree")
    assert snapshot(tmp_path) == before


# 5. tampered state files


def _edit_json(path: Path, edit) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.slow  # spawns gunctl processes that import torch
@pytest.mark.parametrize(
    "file, edit, fragments",
    [
        (
            "splits/split.json",
            lambda d: d["train"][0].update(image="../../../etc/hostname"),
            ["split.json", "'image'", "separator"],
        ),
        (
            "splits/split.json",
            lambda d: d["val"][0].update(width="wide"),
            ["split.json", "'width'"],
        ),
        ("splits/split.json", lambda d: d.pop("val"), ["split.json", "'val'"]),
        ("splits/split.json", lambda d: d.update(train={"a": 1}), ["split.json", "'train'"]),
        (
            "raw/manifest.json",
            lambda d: d["files"][0].update(height=-3),
            ["manifest.json", "'height'"],
        ),
        (
            "raw/manifest.json",
            lambda d: d["files"][0].update(image="/etc/passwd"),
            ["manifest.json", "'image'"],
        ),
        ("raw/manifest.json", lambda d: d["files"].pop(), ["manifest.json", "checksum"]),
        ("raw/manifest.json", lambda d: d.update(files="all"), ["manifest.json", "'files'"]),
    ],
    ids=[
        "split-escape",
        "split-type",
        "split-missing",
        "split-shape",
        "manifest-range",
        "manifest-escape",
        "manifest-list",
        "manifest-shape",
    ],
)
def test_tampered_state_files_are_one_line(demo_copy, tmp_path, file, edit, fragments):
    _edit_json(demo_copy / file, edit)
    before = snapshot(tmp_path)
    result = run_gunctl("train", "--out", demo_copy, "--run-name", "t", *TINY_CLI)
    assert_one_line(result, 2, *fragments)
    assert snapshot(tmp_path, skip=(demo_copy / "runs",)) == before


@pytest.mark.slow  # spawns gunctl processes that import torch
@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"epoch": "one"}, "'epoch'"),
        ({"class_names": "gun"}, "'class_names'"),
        ({"history": [{"epoch": 1}]}, "history[0]"),
        ({"config": {"model": "fasterrcnn"}}, "'model'"),
        ({"config": {"lr": "fast", "model": {"name": "x"}}}, "'lr'"),
        ({"config": {"seed": 2**70, "model": {"name": "x"}}}, "'seed'"),
        ({"config": {"model": {"name": "x", "min_size": 0}}}, "'min_size'"),
        ({"model": {"w": "not a tensor"}}, "'model'"),
        ({"rng": {"torch": [1, 2]}}, "rng"),
        ({"scheduler": {"last_epoch": "x"}}, "scheduler: 'last_epoch'"),
    ],
    ids=[
        "epoch",
        "classes",
        "history",
        "config-model",
        "lr",
        "seed",
        "min-size",
        "weights",
        "rng",
        "scheduler",
    ],
)
def test_tampered_checkpoint_fields_are_one_line(demo_copy, tmp_path, fields, fragment):
    path = crafted_checkpoint(tmp_path / "sibling" / "bad.pth", **fields)
    before = snapshot(tmp_path)
    commands = [["validate", path, "--artifacts", demo_copy]]
    if fragment in ("'epoch'", "'lr'", "scheduler: 'last_epoch'"):  # the same checks; fewer runs
        commands.append(["train", "--resume", path, "--epochs", "3", "--out", demo_copy])
    for args in commands:
        assert_one_line(run_gunctl(*args), 2, "bad.pth", fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("num_classes", 10**9, "999999999 classes: gunctl trains 1 to 1000"),
        ("min_size", 10**6, "--min-size: whole numbers from 32 to 4096"),
        ("max_size", 10**6, "--max-size: whole numbers from 32 to 4096"),
        ("train_sizes", 5, "--multiscale: a list of whole numbers"),
        ("train_sizes", ["a"], "--multiscale: whole numbers"),
        ("fpn_levels", [4, 3, 2], "--fpn-levels: ResNet stages in rising order"),
        ("fpn_levels", 3, "--fpn-levels: a list"),
        ("anchor_sizes", [0, 1, 2, 3, 4], "anchor sizes: whole numbers from 1"),
        ("anchor_sizes", 5, "anchor sizes: a list"),
        ("aspect_ratios", ["x"], "aspect ratios: numbers from 0.05 to 20"),
        ("aspect_ratios", [1e30], "aspect ratios"),
    ],
)
def test_checkpoint_model_values_that_size_memory_are_refused(
    gunctl, tmp_path, field, value, fragment
):
    """A checkpoint's model configuration builds the model: a value that would allocate
    terabytes, or that the builder cannot take, is a one-line error before anything is built."""
    from helpers import tiny_config

    from gunctl.config import Layout, to_dict

    config = to_dict(tiny_config(Layout(tmp_path)))
    config.pop("layout")
    config["model"][field] = value
    path = crafted_checkpoint(tmp_path / "bad.pth", config=config)
    result = gunctl("validate", path, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "bad.pth" in result.stderr and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("zoom_out", 7.0, "--zoom-out: a number from 0 to 1, got 7.0"),
        ("photometric", -1.0, "--photometric: a number from 0 to 1"),
        ("val_every", 0, "--val-every: whole numbers from 1"),
        ("batch_size", 10**9, "--batch-size: whole numbers from 1 to 4096"),
        ("ema_decay", 1.5, "--ema-decay: a number from 0 below 1, got 1.5"),
        ("minutes", -5.0, "--minutes: a number above 0, got -5.0"),
        ("mosaic", 2.0, "--mosaic: a number from 0 to 1"),
        ("hflip", "no", "'hflip' must be true or false"),  # the checkpoint's schema: types
    ],
)
def test_resuming_a_checkpoint_with_bad_options_is_one_line(
    gunctl, tmp_path, field, value, fragment
):
    """--resume takes the run's options from its checkpoint: they pass the command line's rules
    (a zoom-out probability of 7 crashed in torchvision; 0 for --val-every divided by it)."""
    import torch
    from helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "bad.pth", with_optimizer=True)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"][field] = value
    torch.save(checkpoint, path)
    before = snapshot(tmp_path)
    result = gunctl("train", "--resume", path, "--epochs", "3", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "bad.pth" in result.stderr and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


# 6. what reaches the terminal


def test_names_reach_the_terminal_escaped(tmp_path):
    names = [":fire: 2.jpeg", "[bold]3.jpeg", "evil\x1b[31mred.jpeg", "new\nline.jpeg"]
    source = write_tree(tmp_path / "src [b] :fire:", {n: jpeg_bytes() for n in names}, {})
    write_tree(source, {"ok.jpeg": jpeg_bytes()}, {"ok.txt": "2\n5 5 30 30\n[/] \x1b[2J :fire:\n"})
    out = tmp_path / "out [red] :fire:"
    result = run_gunctl(
        "ingest", "--source", source, "--out", out, env={**os.environ, "COLUMNS": "300"}
    )
    assert result.returncode == 0, result.stderr
    shown = result.stderr + result.stdout
    assert "Traceback" not in shown and "\x1b" not in shown and "🔥" not in shown
    assert "Images/:fire: 2.jpeg" in shown and "Images/[bold]3.jpeg" in shown
    assert "evil\\x1b[31mred.jpeg" in shown and "new\\nline.jpeg" in shown
    assert "Labels/ok.txt:3: '[/] \\x1b[2J :fire:'" in shown  # label text, as read
    assert f"Wrote {out}" in result.stdout  # markup in the path shown as text
    missing = run_gunctl(
        "ingest", "--source", tmp_path / "no [/] :fire: \x1b[2J", "--out", tmp_path / "o2"
    )
    line = assert_one_line(missing, 2, "no [/] :fire: \\x1b[2J")
    assert "\x1b" not in missing.stderr and "🔥" not in line


# 7. tracebacks that became one line


def _zip_with(path: Path, patch=None) -> Path:
    """A Kaggle-layout zip of two pairs; ``patch(bytearray, info)`` edits Images/2.jpeg's bytes."""
    members = {
        "Images/1.jpeg": jpeg_bytes(),
        "Labels/1.txt": GOOD.encode(),
        "Images/2.jpeg": jpeg_bytes(),
        "Labels/2.txt": GOOD.encode(),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    if patch:
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            patch(data, archive.getinfo("Images/2.jpeg"))
        path.write_bytes(bytes(data))
    return path


def _set_header_field(data: bytearray, info: zipfile.ZipInfo, local: int, central: int, value):
    """Set a 16-bit field of the member's local header and its central directory entry."""
    import struct

    data[info.header_offset + local : info.header_offset + local + 2] = struct.pack("<H", value)
    at = data.find(b"PK\x01\x02")
    while at != -1:
        if struct.unpack("<I", data[at + 42 : at + 46])[0] == info.header_offset:
            data[at + central : at + central + 2] = struct.pack("<H", value)
        at = data.find(b"PK\x01\x02", at + 4)


def _encrypted(data: bytearray, info: zipfile.ZipInfo) -> None:
    _set_header_field(data, info, 6, 8, info.flag_bits | 0x1)  # general purpose bit 0


def _deflate64(data: bytearray, info: zipfile.ZipInfo) -> None:
    _set_header_field(data, info, 8, 10, 9)  # compression method 9


def _bad_crc(data: bytearray, info: zipfile.ZipInfo) -> None:
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 100] ^= 0xFF


@pytest.mark.parametrize(
    "patch, detail",
    [(_encrypted, "encrypted"), (_deflate64, "compression"), (_bad_crc, "CRC")],
    ids=["encrypted", "deflate64", "bad-crc"],
)
def test_unreadable_zip_members_are_reported(tmp_path, patch, detail):
    archive = _zip_with(tmp_path / "data.zip", patch)
    result = run_gunctl("ingest", "--source", archive, "--out", tmp_path / "out", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 1 and report["problem_counts"] == {"unreadable_member": 1}
    assert "Images/2.jpeg" in report["problems"][0] and detail in report["problems"][0]


def test_odd_values_are_one_line(tmp_path):
    source = write_tree(
        tmp_path / "src",
        {
            "².jpeg": jpeg_bytes(),
            "1.jpeg": jpeg_bytes(),
            "wide.png": image_bytes("L", "PNG", (6500, 10)),
            "many.jpeg": jpeg_bytes(),
        },
        {"².txt": GOOD, "1.txt": GOOD, "wide.txt": GOOD, "many.txt": "0\n" + "1 1 9 9\n" * 5000},
    )
    out = tmp_path / "out"
    result = run_gunctl("ingest", "--source", source, "--out", out, "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == 2  # ² and 1
    assert report["problem_counts"] == {"extreme_aspect_ratio": 1, "too_many_boxes": 1}
    problems = "\n".join(report["problems"])
    assert "Images/wide.png: 6500x10 px" in problems and "Labels/many.txt: 5000" in problems
    for seed in ("-1", str(2**70)):
        result = run_gunctl("split", "--out", out, "--seed", seed)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "--seed" in result.stderr


def test_cpu_out_of_memory_is_exit_3(demo_copy, gunctl, monkeypatch):
    import gunctl.core.trainer as trainer

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 9876543210 bytes."
        )

    monkeypatch.setattr(trainer, "train_one_epoch", out_of_memory)
    result = gunctl("train", "--out", demo_copy, "--run-name", "oom", *TINY_CLI)
    assert result.exit_code == 3, result.output
    assert "out of memory at epoch 1, batch 1" in result.stderr and "--batch-size" in result.stderr
    assert (demo_copy / "runs" / "oom" / "last.pth").exists()  # resumable


@pytest.mark.slow  # spawns gunctl processes that import torch
def test_foreign_checkpoints_in_tb_list_are_skipped(tmp_path):
    import torch

    runs = tmp_path / "out" / "runs"
    (runs / "plain").mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, runs / "plain" / "last.pth")
    crafted_checkpoint(runs / "typed" / "last.pth", config={"model": "fasterrcnn"})
    (runs / "fifo").mkdir()
    os.mkfifo(runs / "fifo" / "last.pth")
    result = run_gunctl("tb", "--list", "--out", tmp_path / "out", timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for name in ("plain", "typed", "fifo"):
        assert f"runs/{name}/last.pth" in result.stderr


# 8. resource exhaustion


# Peak memory of the command itself: VmHWM belongs to the process's memory map, which exec
# replaces (ru_maxrss would keep the high-water mark of the forked pytest process).
PEAK_MEMORY = (
    "import re, sys\n"
    "from gunctl.cli import app\n"
    "try:\n"
    "    app(sys.argv[2:], prog_name='gunctl')\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "status = open('/proc/self/status').read()\n"
    "open(sys.argv[1], 'w').write(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
    "sys.exit(code)\n"
)


def test_a_huge_label_in_a_small_zip_stays_in_bounded_memory(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Images/1.jpeg", jpeg_bytes())
        z.writestr("Labels/1.txt", GOOD)
        z.writestr("Images/2.jpeg", jpeg_bytes())
        z.writestr("Labels/2.txt", b"1\n" + b"1 1 9 9\n" * 8_000_000)  # 64 MB unpacked
    assert archive.stat().st_size < 1_000_000
    rss_file = tmp_path / "rss"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK_MEMORY,
            rss_file,
            "ingest",
            "--source",
            archive,
            "--out",
            tmp_path / "out",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["problem_counts"] == {"file_too_large": 1} and report["images"] == 1
    assert "Labels/2.txt: larger than 1 MiB" in report["problems"][0]
    assert int(rss_file.read_text()) < 200 * 1024  # KiB; reading the member whole took ~4 GiB


@pytest.mark.slow
def test_zip_ingest_is_linear_in_members(tmp_path):
    archive = tmp_path / "many.zip"
    image = jpeg_bytes(16, 16)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for index in range(2_000):
            z.writestr(f"Images/{index}.jpeg", image)
            z.writestr(f"Labels/{index}.txt", "1\n1 1 9 9\n")
        for index in range(6_000):
            z.writestr(f"Labels/notes-{index}.md", "x")
    started = time.perf_counter()
    result = run_gunctl("ingest", "--source", archive, "--out", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - started < 30  # was ~200 s: the archive re-read per member


# 9. data fidelity


def test_labels_in_another_format_are_refused_with_the_hint(tmp_path):
    yolo = "0 0.5 0.5 0.25 0.25\n0 0.2 0.3 0.1 0.1\n"
    source = write_tree(
        tmp_path / "src",
        {"1.jpeg": jpeg_bytes(), "2.jpeg": jpeg_bytes()},
        {"1.txt": yolo, "2.txt": yolo},
    )
    out = tmp_path / "out"
    result = run_gunctl("ingest", "--source", source, "--out", out)  # detected: YOLO
    assert_one_line(result, 2, "YOLO")
    result = run_gunctl("ingest", "--source", source, "--out", out, "--format", "kaggle")
    assert_one_line(result, 2, "no box survived", "Labels/1.txt", "YOLO")
    assert not (out / "raw").exists()
    write_tree(source, {"3.jpeg": jpeg_bytes()}, {"3.txt": GOOD})  # one good file: a warning
    result = run_gunctl("ingest", "--source", source, "--out", out, "--format", "kaggle", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["problem_counts"] == {"other_format": 2}


def test_coordinates_orientation_and_folders_are_kept_faithfully(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(buffer, "JPEG", exif=exif.tobytes())
    precise = "1\n5.123456789 5.5 30.25 30.0001\n"
    source = write_tree(
        tmp_path / "src",
        {"1.jpeg": jpeg_bytes(), "2.jpeg": buffer.getvalue()},
        {"1.txt": precise, "2.txt": GOOD},
    )
    out = tmp_path / "out"
    result = run_gunctl("ingest", "--source", source, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (out / "raw" / "Labels" / "1.txt").read_text() == precise
    assert report["problem_counts"] == {"exif_orientation": 1}
    assert "Images/2.jpeg: orientation 6" in report["problems"][0]
    assert (out / "raw" / "Labels" / "2.txt").read_text() == GOOD  # boxes in the stored frame


def test_a_symlinked_folder_leading_outside_the_source_is_refused(tmp_path):
    outside = write_tree(tmp_path / "elsewhere", {"1.jpeg": jpeg_bytes()}, {"1.txt": GOOD})
    source = tmp_path / "src"
    (source / "Labels").mkdir(parents=True)
    (source / "Labels" / "1.txt").write_text(GOOD)
    (source / "Images").symlink_to(outside / "Images")
    before = snapshot(tmp_path)
    result = run_gunctl("ingest", "--source", source, "--out", tmp_path / "out")
    assert_one_line(result, 2, "Images", "leads outside")
    assert snapshot(tmp_path, skip=(tmp_path / "out",)) == before
    assert not (tmp_path / "out" / "raw").exists()


def test_a_repeated_zip_member_keeps_what_the_message_says(tmp_path):
    first, last = jpeg_bytes(64, 48), jpeg_bytes(80, 60)
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as z, pytest.warns(UserWarning, match="Duplicate"):
        z.writestr("Images/1.jpeg", first)
        z.writestr("Images/1.jpeg", last)
        z.writestr("Labels/1.txt", GOOD)
    out = tmp_path / "out"
    result = run_gunctl("ingest", "--source", archive, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    problem = json.loads(result.stdout)["problems"][0]
    assert "Images/1.jpeg: 2 copies; " in problem and "the last copy is kept" in problem
    assert (out / "raw" / "Images" / "1.jpeg").read_bytes() == last
