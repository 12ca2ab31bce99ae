import json

from helpers import jpeg_bytes, write_tree


def test_help_lists_the_commands(gunctl):
    result = gunctl("--help")
    assert result.exit_code == 0
    for name in ("ingest", "split"):
        assert name in result.stdout


def test_ingest_demo_then_split_prints_tables(gunctl, tmp_path):
    out = tmp_path / "art"
    result = gunctl("ingest", "--source", "demo", "--count", "12", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "images" in result.stdout and "12" in result.stdout
    assert (out / "raw" / "manifest.json").exists()
    result = gunctl("split", "--subset", "10", "--out", out)
    assert result.exit_code == 0
    assert "train" in result.stdout and "val" in result.stdout
    split = json.loads((out / "splits" / "split.json").read_text())
    assert (len(split["train"]), len(split["val"])) == (8, 2)


def test_split_is_byte_identical_across_runs(gunctl, tmp_path):
    out = tmp_path / "art"
    gunctl("ingest", "--source", "demo", "--count", "10", "--out", out)
    gunctl("split", "--seed", "5", "--out", out)
    first = (out / "splits" / "split.json").read_bytes()
    gunctl("split", "--seed", "6", "--out", out)
    assert (out / "splits" / "split.json").read_bytes() != first
    gunctl("split", "--seed", "5", "--out", out)
    assert (out / "splits" / "split.json").read_bytes() == first


def test_ingest_json_reports_problems_on_stdout_only(gunctl, tmp_path):
    src = write_tree(
        tmp_path / "src",
        {"1.jpeg": jpeg_bytes(64, 48), "2.jpeg": b"not a jpeg"},
        {"1.txt": "2\n1 1 10 10\n", "2.txt": "0\n"},
    )
    result = gunctl("ingest", "--source", src, "--out", tmp_path / "a", "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["images"] == 1
    assert payload["problem_counts"] == {"count_mismatch": 1, "unreadable_image": 1}


def test_rerun_needs_force(gunctl, tmp_path):
    out = tmp_path / "a"
    assert gunctl("ingest", "--source", "demo", "--count", "3", "--out", out).exit_code == 0
    result = gunctl("ingest", "--source", "demo", "--count", "3", "--out", out)
    assert result.exit_code == 2
    assert "already exists; pass --force" in result.stderr
    assert "Traceback" not in result.output
    assert (
        gunctl("ingest", "--source", "demo", "--force", "--count", "3", "--out", out).exit_code == 0
    )


def test_missing_source_is_one_line_exit_2(gunctl, tmp_path):
    result = gunctl("ingest", "--source", tmp_path / "nope", "--out", tmp_path / "a")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "no such folder" in lines[0]


def test_kaggle_offline_names_the_offline_alternative(gunctl, tmp_path):
    result = gunctl(
        "ingest", "--out", tmp_path / "a", env={"KAGGLEHUB_CACHE": str(tmp_path / "kc")}
    )
    assert result.exit_code == 2
    assert "Kaggle download of issaisasank/guns-object-detection failed" in result.stderr
    assert "--source PATH" in result.stderr and "Traceback" not in result.output


def test_split_without_ingest(gunctl, tmp_path):
    result = gunctl("split", "--out", tmp_path / "empty")
    assert result.exit_code == 2
    assert "manifest.json" in result.stderr and "gunctl ingest" in result.stderr


def test_strict_exit_code(gunctl, tmp_path):
    src = write_tree(tmp_path / "src", {"1.jpeg": jpeg_bytes(64, 48)}, {"1.txt": "1\n0 0 99 10\n"})
    result = gunctl("ingest", "--source", src, "--strict", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "Labels/1.txt:2" in result.stderr
    assert not (tmp_path / "a" / "raw").exists()


def test_debug_shows_the_traceback(gunctl, tmp_path):
    import pytest

    from gunctl.errors import SourceError

    with pytest.raises(SourceError):
        gunctl("--debug", "ingest", "--source", tmp_path / "nope", "--out", tmp_path / "a")
