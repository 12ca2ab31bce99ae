"""Zip members that gunctl will not read: one rule for ingest and predict."""

from __future__ import annotations

import re
import zipfile

MAX_MEMBER_BYTES = 64 * 1024 * 1024  # no single image or label of this data set comes near it


def member_problem(member: zipfile.ZipInfo) -> str | None:
    """Why ``member`` is unsafe to extract or read (a path leading out, a link), else None."""
    name = member.filename
    if (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name)
        or ".." in re.split(r"[/\\]", name)
    ):
        return "its path leads outside the archive"
    if (member.external_attr >> 16) & 0o170000 == 0o120000:
        return "symbolic links are not accepted"
    return None


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    """The member's bytes, read no further than ``limit`` (whatever its header claims);
    ValueError when it is larger."""
    if member.file_size > limit:
        raise ValueError(f"{member.file_size:,} bytes, limit {limit:,}")
    with archive.open(member) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"more than {limit:,} bytes once decompressed")
    return data
