"""Issue 24, through the CLI: each class of failure is one line or a named skip, the documented
exit code, no traceback, nothing outside the chosen folder changed, nothing on disk lost.

Grouped by what they protect: what a command reads (special files, links, archives, formats),
what it writes (names, links, locks, concurrent runs, resumes, short writes), and what a failed
command leaves behind. Commands run in real processes (``run_gunctl``) where a broken rule
would hang (a FIFO) or where two processes race; in-process (``gunctl``) elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import jpeg_bytes, run_gunctl, tiny_checkpoint, write_tree

pytestmark = pytest.mark.slow  # real processes that load a model

# --- helpers --------------------------------------------------------------------------------


def snapshot(root: Path, *skip: Path) -> dict[str, str]:
    """Every path under ``root`` (links not followed) with its content hash or link target,
    except those under ``skip``: what must not change."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if any(path == s or s in path.parents for s in skip):
                continue
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "dir"
            else:
                found[str(path)] = "special"
    return found


def one_line_error(result, *fragments: str, code: int = 2) -> str:
    """The command failed with ``code`` and one error line holding ``fragments``."""
    stderr = result.stderr
    assert result.returncode == code, (result.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def image(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    """A JPEG whose content differs by ``seed`` (to tell outputs apart)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def patched_zip(path: Path, members: dict[str, bytes], patch: dict[str, str]) -> Path:
    """A stored zip of ``members``; ``patch[name]`` breaks one: "encrypted" (the flag bit),
    "deflate64" (method 9) or "bad_crc" (a flipped data byte), in the local and central
    headers as a real archiver would write them."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a duplicate name is what some tests want
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name, data in members.items() if isinstance(members, dict) else members:
                archive.writestr(name, data)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    central = [i for i in range(len(data) - 3) if data[i : i + 4] == b"PK\x01\x02"]
    for info, entry in zip(infos, central, strict=True):
        how = patch.get(info.filename)
        local = info.header_offset
        if how == "encrypted":
            data[local + 6] |= 1
            data[entry + 8] |= 1
        elif how == "deflate64":
            data[local + 8 : local + 10] = (9).to_bytes(2, "little")
            data[entry + 10 : entry + 12] = (9).to_bytes(2, "little")
        elif how == "bad_crc":
            name_len = int.from_bytes(data[local + 26 : local + 28], "little")
            extra_len = int.from_bytes(data[local + 28 : local + 30], "little")
            data[local + 30 + name_len + extra_len + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def checkpoint(module_tmp) -> Path:
    return tiny_checkpoint(module_tmp / "ck" / "tiny.pth")


def predict(checkpoint: Path, *args, cwd: Path | None = None, **popen):
    command = [sys.executable, "-m", "gunctl", "predict", "--weights", str(checkpoint), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, **popen)


# --- what commands read: special files, links, archives -------------------------------------


@pytest.fixture(scope="module")
def mixed_predict(module_tmp, checkpoint):
    """One predict over every hostile input at once: a FIFO (in a folder and matched by a
    glob), a symlink loop, names that collide once written, zips with encrypted, deflate64,
    bad-CRC and repeated members."""
    root = module_tmp / "inputs"
    (root / "shots").mkdir(parents=True)
    (root / "shots" / "a.jpg").write_bytes(image(1))
    os.mkfifo(root / "shots" / "fifo.jpg")
    (root / "shots" / "loop1.jpg").symlink_to("loop2.jpg")
    (root / "shots" / "loop2.jpg").symlink_to("loop1.jpg")
    (root / "b").write_bytes(image(2))  # written as JPEG: b.jpg...
    (root / "b.jpg").write_bytes(image(3))  # ...beside a b.jpg
    for folder, seed in (("d1", 4), ("d2", 5)):  # the same stem from two folders
        (root / folder / "cam").mkdir(parents=True)
        (root / folder / "cam" / "x.jpg").write_bytes(image(seed))
    big = image(6, (320, 240))  # large enough for the byte flipped at offset 100
    patched_zip(
        root / "pack.zip",
        [
            ("ok.jpg", image(7)),
            ("enc.jpg", big),
            ("d64.jpg", big),
            ("crc.jpg", big),
            ("twice.jpg", image(8)),
            ("twice.jpg", image(9)),
        ],  # fmt: skip
        {"enc.jpg": "encrypted", "d64.jpg": "deflate64", "crc.jpg": "bad_crc"},
    )
    before = snapshot(root)
    out = module_tmp / "mixed-out"
    sources = ["shots", "b", "b.jpg", "d1/cam", "d2/cam", "pack.zip", "shots/*.jpg"]
    result = predict(checkpoint, *sources, "--out", str(out), cwd=root)
    return result, out, root, before


def test_special_files_and_loops_are_named_and_skipped(mixed_predict):
    result, out, root, before = mixed_predict
    assert result.returncode == 0, result.stderr[-2000:]  # the rest is predicted
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert sum("fifo.jpg: a FIFO, not a regular file; left out" in w for w in warnings) == 2
    assert any("loop1.jpg: a symlink loop; left out" in w for w in warnings)
    assert snapshot(root) == before  # the inputs are untouched (the FIFO never opened)


def test_a_fifo_as_config_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "config.yaml")  # nobody writes to it: a read would wait for ever
    result = run_gunctl("train", "--config", tmp_path / "config.yaml", timeout=120)
    one_line_error(result, "config.yaml: cannot read the config file (a FIFO")


def test_unreadable_and_repeated_zip_members_are_named_and_skipped(mixed_predict):
    result, out, _, _ = mixed_predict
    stderr = result.stderr
    assert "pack.zip:enc.jpg: encrypted" in stderr
    assert "pack.zip:d64.jpg: compression method deflate64, which gunctl cannot read" in stderr
    assert "pack.zip:crc.jpg: cannot read (bad CRC-32 (the member is corrupt))" in stderr
    assert "pack.zip:twice.jpg: 2 members of this name; the last is read" in stderr
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["member"] for r in lines if r["member"]] == ["ok.jpg", "twice.jpg"]


def test_outputs_never_collide_and_the_jsonl_names_each_file(mixed_predict):
    result, out, root, _ = mixed_predict
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    # a.jpg twice (folder and glob), b, b.jpg, two x.jpg, ok.jpg, twice.jpg
    assert len(lines) == 8
    outputs = [r["output"] for r in lines]
    assert len(set(outputs)) == len(outputs)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([*outputs, "predictions.jsonl"])  # each named file, and no other
    by_source = {r["source"]: r["output"] for r in lines}
    assert by_source["b"] == "b.jpg" and by_source["b.jpg"] == "b_2.jpg"
    assert {by_source["d1/cam/x.jpg"], by_source["d2/cam/x.jpg"]} == {"cam/x.jpg", "cam/x_2.jpg"}


def test_ingest_reports_encrypted_deflate64_and_bad_crc_members(tmp_path, gunctl):
    big = image(6, (320, 240))
    members = {"Images/1.jpg": image(1), "Labels/1.txt": b"1\n5 5 20 20\n"}
    for stem in ("2", "3", "4"):
        members[f"Images/{stem}.jpg"] = big
        members[f"Labels/{stem}.txt"] = b"0\n"
    patch = {"Images/2.jpg": "encrypted", "Images/3.jpg": "deflate64", "Images/4.jpg": "bad_crc"}
    source = patched_zip(tmp_path / "set.zip", members, patch)
    out = tmp_path / "art"
    result = gunctl("ingest", "--source", source, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 1
    assert report["problem_counts"]["unreadable_member"] == 3
    problems = "\n".join(report["problems"])
    for fragment in ("encrypted", "deflate64", "bad CRC-32"):
        assert fragment in problems


# --- formats: one rule for every reader -----------------------------------------------------


def test_a_coco_image_over_the_box_limit_is_left_out_as_a_kaggle_one_is(tmp_path, gunctl):
    source = tmp_path / "coco"
    (source / "images").mkdir(parents=True)
    (source / "images" / "1.jpg").write_bytes(jpeg_bytes(200, 200))
    (source / "images" / "2.jpg").write_bytes(jpeg_bytes(200, 200))
    boxes = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}
        for k in range(1200)
    ]
    boxes.append({"id": 5000, "image_id": 2, "category_id": 1, "bbox": [5, 5, 50, 50]})
    document = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 200, "height": 200},
            {"id": 2, "file_name": "2.jpg", "width": 200, "height": 200},
        ],
        "annotations": boxes,
        "categories": [{"id": 1, "name": "gun"}],
    }
    (source / "instances.json").write_text(json.dumps(document))
    out = tmp_path / "art"
    result = gunctl("ingest", "--source", source, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 1 and report["problem_counts"]["too_many_boxes"] == 1
    assert "1,200 boxes, limit 1,000" in "\n".join(report["problems"])
    # raw/ holds nothing that its own readers refuse: export-data takes it whole
    exported = gunctl("export-data", tmp_path / "export", "--out", out)
    assert exported.exit_code == 0, exported.output


def test_a_voc_file_with_an_external_dtd_is_refused(tmp_path, gunctl):
    source = tmp_path / "voc"
    (source / "Annotations").mkdir(parents=True)
    (source / "JPEGImages").mkdir()
    (source / "JPEGImages" / "1.jpg").write_bytes(jpeg_bytes(100, 100))
    (source / "Annotations" / "1.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE annotation SYSTEM "http://127.0.0.1:9/voc.dtd">\n'
        "<annotation><filename>1.jpg</filename><object><name>gun</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>50</xmax><ymax>50</ymax></bndbox></object></annotation>\n"
    )
    out = tmp_path / "art"
    result = run_gunctl("ingest", "--source", source, "--out", out)
    one_line_error(result, "1.xml", "DTDForbidden")
    assert not out.exists()  # nothing written, not even the --out folder


# --- what commands write: links, locks, concurrent runs, resumes, short writes --------------


@pytest.fixture(scope="module")
def ingested(module_tmp) -> Path:
    out = module_tmp / "ingested"
    tree = write_tree(
        module_tmp / "kaggle",
        {"1.jpg": jpeg_bytes(), "2.jpg": jpeg_bytes()},
        {"1.txt": "1\n5 5 20 20\n", "2.txt": "0\n"},
    )
    assert run_gunctl("ingest", "--source", tree, "--out", out).returncode == 0
    return out


def test_export_data_never_writes_through_a_symlinked_subfolder(tmp_path, ingested):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    target = tmp_path / "export"
    target.mkdir()
    (target / "images").symlink_to(outside, target_is_directory=True)
    before = snapshot(tmp_path)
    result = run_gunctl("export-data", target, "--out", ingested, "--force", "--format", "yolo")
    one_line_error(result, "images is a symlink", "never writes through one")
    assert snapshot(tmp_path) == before  # nothing moved in, outside or inside


def test_a_second_export_into_the_same_folder_is_refused_while_the_first_writes(tmp_path, ingested):
    """Another process holds the folder (as a running export does): the export fails at once
    with one line and writes nothing; once that process is gone the same command works."""
    import subprocess
    import sys

    target = tmp_path / "export"
    target.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(target),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_gunctl("export-data", target, "--out", ingested, "--format", "yolo")
        one_line_error(result, str(target), "another gunctl export-data is writing here")
        assert list(target.iterdir()) == []
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    result = run_gunctl("export-data", target, "--out", ingested, "--format", "yolo")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in target.iterdir()) == ["data.yaml", "images", "labels"]


@pytest.mark.parametrize("lock", ["run", "raw"])
def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, lock):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "art"
    if lock == "run":
        (out / "runs" / "r1").mkdir(parents=True)
        (out / "runs" / "r1" / "config.yaml").write_text("x: 1\n")
        (out / "runs" / "r1" / ".lock").symlink_to(victim)
        result = run_gunctl("runs", "rm", "r1", "--out", out)
        one_line_error(result, ".lock: a symlink; lock files are never followed")
        assert (out / "runs" / "r1" / "config.yaml").exists()
    else:
        out.mkdir()
        (out / ".raw.lock").symlink_to(victim)
        result = run_gunctl("ingest", "--source", "demo", "--out", out)
        one_line_error(result, ".raw.lock: a symlink; lock files are never followed")
        assert not (out / "raw").exists()
    assert victim.read_text() == "precious\n"


def test_two_predicts_into_one_new_out_one_wins(tmp_path, checkpoint):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(image(1))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gunctl", "predict", "--weights", str(checkpoint)]
    command += [str(tmp_path / "in"), "--out", str(out)]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "Traceback" not in loser
    assert "being written by another gunctl predict" in loser or "already exists" in loser
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one run's output, whole


def test_the_default_predictions_folder_is_claimed_exclusively(tmp_path):
    from gunctl.core.predict import claim_out

    base = tmp_path / "artifacts" / "predictions" / "20261204-170000"
    first, made, fd1 = claim_out(base, numbered=True)
    second, _, fd2 = claim_out(base, numbered=True)  # the same second
    assert (first, second) == (base, base.with_name(base.name + "-2"))
    assert made == [tmp_path / "artifacts", tmp_path / "artifacts" / "predictions", base]
    os.close(fd1)
    os.close(fd2)


def test_resume_into_a_root_with_a_same_named_run_writes_nothing(tmp_path):
    source = tiny_checkpoint(tmp_path / "a" / "runs" / "tiny" / "last.pth", with_optimizer=True)
    other = tmp_path / "b" / "runs" / "tiny"  # another run of the same name, no last.pth
    other.mkdir(parents=True)
    (other / "best.pth").write_bytes(b"another run's weights")
    (other / "config.yaml").write_text("run: other\n")
    before = snapshot(tmp_path)
    result = run_gunctl("train", "--resume", source, "--out", tmp_path / "b", "--epochs", "3")
    one_line_error(result, "holds files of another run", "resume under another --out")
    after = snapshot(tmp_path)
    assert after == before


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_during_predict_is_exit_2_naming_the_file(tmp_path, checkpoint):
    from PIL import Image

    (tmp_path / "in").mkdir()
    for k in range(3):
        (tmp_path / "in" / f"{k}.jpg").write_bytes(image(k, (320, 240)))  # ~90 KB each
    out = tmp_path / "out"
    result = predict(
        checkpoint, tmp_path / "in", "--out", out, preexec_fn=_file_size_limit(40 * 1024)
    )
    one_line_error(result, "cannot write", "File too large", ".jpg")
    assert not (out / "predictions.jsonl").exists()  # written whole or not at all
    for path in out.rglob("*.jpg"):  # what is there is whole
        Image.open(path).load()


# --- what a failed command leaves behind ----------------------------------------------------


def test_failed_commands_leave_nothing_behind(tmp_path, checkpoint):
    before = snapshot(tmp_path)
    result = run_gunctl("train", "--out", tmp_path / "new" / "art", "--epochs", "1")
    one_line_error(result, "no manifest")
    result = predict(checkpoint, "nothing-*.jpg", cwd=tmp_path)
    one_line_error(result, "nothing could be read")
    assert "nothing-*.jpg: no file matches this pattern" in result.stderr
    assert snapshot(tmp_path) == before  # no new/, no artifacts/predictions/


def test_runs_rm_checks_every_name_before_removing_any(tmp_path):
    out = tmp_path / "art"
    for name in ("a", "b"):
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / "last.pth").write_bytes(b"run " + name.encode())
    before = snapshot(tmp_path)
    result = run_gunctl("runs", "rm", "a", "missing", "b", "--out", out)
    one_line_error(result, "no such run", "missing", "nothing was removed")
    assert snapshot(tmp_path) == before
    assert run_gunctl("runs", "rm", "a", "b", "--out", out).returncode == 0
    assert list((out / "runs").iterdir()) == []
