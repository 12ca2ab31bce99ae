"""Untrusted data trees: every kind of bad file is handled as documented (repaired, left out or
refused in one line), only JPEG and PNG decoders see image bytes, labels and coordinates are
kept as they were, and names from the data reach the terminal as inert text."""

import io
import json
import os
from pathlib import Path

import pytest
from helpers import TINY_CLI, jpeg_bytes, run_gunctl, write_tree
from PIL import Image
from untrusted import (
    GOOD,
    assert_clean_failure,
    assert_one_line,
    image_bytes,
    snapshot,
)

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
