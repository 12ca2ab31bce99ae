"""Atomic writes: the target is replaced whole or not at all, and no temporary is left."""

from __future__ import annotations

import pytest

from gunctl.core.fileio import atomic_open, write_bytes_atomic, write_with
from gunctl.errors import OutputError


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "out.json"
    write_bytes_atomic(path, b"one")
    write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_a_failing_writer_keeps_the_previous_content(tmp_path):
    path = tmp_path / "out.bin"
    write_bytes_atomic(path, b"good")

    def half_then_fail(handle):
        handle.write(b"half")
        raise RuntimeError("writer broke")

    with pytest.raises(RuntimeError, match="writer broke"):
        write_with(path, half_then_fail)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_an_os_error_while_writing_is_one_output_error(tmp_path):
    path = tmp_path / "out.bin"

    def disk_full(handle):
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"out\.bin: cannot write \(No space left on device\)"):
        write_with(path, disk_full)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="cannot write"):
        write_bytes_atomic(blocker / "out.json", b"x")
    with pytest.raises(OutputError, match="cannot write"), atomic_open(blocker / "x"):
        pass
