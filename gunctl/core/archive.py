"""Zip members that gunctl will not read, and how reading one fails: one rule for ingest and
predict.

A member is refused before extraction when its path leads out or it is a link
(``member_problem``), and left out, one line each, when it cannot be read: encrypted, a
compression method Python's zipfile lacks (deflate64, implode...), or a read that fails (a bad
CRC, a truncated stream). ``read_member`` turns every such failure into ``MemberError``, one
line, so no zip error class escapes to a traceback.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections import Counter

MAX_MEMBER_BYTES = 64 * 1024 * 1024  # no single image or label of this data set comes near it
READABLE_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
for _name in ("ZIP_BZIP2", "ZIP_LZMA"):  # readable when Python was built with bz2 / lzma
    READABLE_METHODS[getattr(zipfile, _name)] = _name[4:].lower()
METHOD_NAMES = {9: "deflate64", 6: "implode", 1: "shrink", 98: "PPMd", 93: "zstandard"}


class MemberError(ValueError):
    """A zip member that cannot be read; its message is one line."""


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


def unreadable(member: zipfile.ZipInfo) -> str | None:
    """Why ``member`` cannot be read at all (from its header: no byte is read), else None."""
    if member.flag_bits & 0x1:
        return "encrypted (password-protected members are not read)"
    if member.compress_type not in READABLE_METHODS:
        method = METHOD_NAMES.get(member.compress_type, f"method {member.compress_type}")
        return f"compression method {method}, which gunctl cannot read"
    return None


def duplicates(members: list[zipfile.ZipInfo]) -> dict[str, int]:
    """File names held more than once, with their counts (the last copy is the one read)."""
    counts = Counter(m.filename for m in members if not m.is_dir())
    return {name: count for name, count in counts.items() if count > 1}


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    """The member's bytes, read no further than ``limit`` (whatever its header claims);
    MemberError (a ValueError) when it is larger or cannot be read."""
    if member.file_size > limit:
        raise MemberError(f"{member.file_size:,} bytes, limit {limit:,}")
    reason = unreadable(member)
    if reason:
        raise MemberError(reason)
    try:
        with archive.open(member) as handle:
            data = handle.read(limit + 1)
    except READ_ERRORS as exc:
        raise MemberError(describe(exc)) from None
    if len(data) > limit:
        raise MemberError(f"more than {limit:,} bytes once decompressed")
    return data


def describe(exc: BaseException) -> str:
    """One line for a failed member read ("Bad CRC-32 for file 'x'" -> "bad CRC-32")."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "CRC" in text:
        return "bad CRC-32 (the member is corrupt)"
    return f"unreadable ({text[:120]})"


READ_ERRORS = (
    zipfile.BadZipFile,  # bad CRC, bad local header
    RuntimeError,  # encrypted ("password required")
    NotImplementedError,  # deflate64, implode and other compression methods
    zlib.error,
    EOFError,
    OSError,
    ValueError,
)
try:  # a corrupt LZMA stream
    import lzma

    READ_ERRORS = (*READ_ERRORS, lzma.LZMAError)
except ImportError:  # pragma: no cover - Python without lzma
    pass
