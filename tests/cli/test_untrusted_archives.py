"""Untrusted zip archives: members that would leave the output (zip-slip, absolute paths,
symlinks) are refused, unreadable members are reported one line each, memory and time stay
bounded whatever the archive claims, and a repeated member keeps what the message says."""

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from helpers import jpeg_bytes, run_gunctl
from untrusted import (
    GOOD,
    assert_clean_failure,
    make_zip,
)


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
