"""Shared by the tests of untrusted inputs (tests/cli/test_untrusted_*.py, test_interrupts.py,
test_resource_faults.py): hostile files, and the checks that a refusal is one line and leaves
every file as it was."""

import io
import os
import pickle
import zipfile
from pathlib import Path

from PIL import Image


def image_bytes(mode="RGB", fmt="JPEG", size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 100 if mode in ("L", "P", "1") else (100,) * len(mode)).save(buffer, fmt)
    return buffer.getvalue()


GOOD = "1\n5 5 30 30\n"


def assert_clean_failure(result, code, fragment):
    assert result.returncode == code, result.stderr
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


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


def evil_file(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"format": "gunctl-checkpoint", "schema": 1, "x": Evil()}))
    return path


def make_zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, "/etc/passwd")
    return path
