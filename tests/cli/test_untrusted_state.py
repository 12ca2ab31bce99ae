"""Untrusted state files and names: the manifest and the split are checked when read back, data
changed since ingest is refused, run names never leave the runs folder, and --force never
replaces a folder that gunctl did not write. Nothing on disk changes when a command refuses."""

import json
from pathlib import Path

import pytest
from helpers import TINY_CLI, jpeg_bytes, run_gunctl, write_tree
from untrusted import (
    GOOD,
    assert_one_line,
    snapshot,
)


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
