"""Atomic writes (a temporary file in the same folder, fsync, its size checked, then rename
over the target), bounded reads of untrusted documents (JSON state files, YAML), and the
file-system rules every command shares:

- **Reads**: only regular files are read (``open_regular``: opened non-blocking, then
  ``fstat``), so a FIFO, a device or a socket named like an image never blocks a command; a
  symlink loop is one reason line (``not_regular``), not a traceback.
- **Writes**: never through a link. Folders under an output root are made one component at a
  time and an existing component that is a symlink is refused (``make_dirs_under``); lock
  files are opened with ``O_NOFOLLOW`` (``open_lock``). Every file is written whole or not at
  all (``atomic_open``: a short write, e.g. a full disk or a file-size limit, raises).
- **Leftovers**: ``make_dirs`` returns the folders it created, ``remove_created`` takes away
  those still empty, so a command that fails leaves no empty folders behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from gunctl.errors import DataError, cannot_write, first_line

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024  # a manifest of 3,000 images is ~1 MiB
MAX_CONFIG_BYTES = 1024 * 1024  # a run's config.yaml is ~2 KiB


class TooLarge(Exception):
    """A file above the size its reader accepts (``read_bounded``)."""

    def __init__(self, limit: int):
        super().__init__(f"larger than {_size(limit)}")
        self.limit = limit


def read_bounded(handle: BinaryIO, limit: int) -> bytes:
    """At most ``limit`` bytes of ``handle`` (closed afterwards); TooLarge when there are more.

    Memory stays bounded whatever a file or a zip member claims about its size.
    """
    with handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(limit)
    return data


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only when the block completes and the file
    on disk holds every byte written (checked after fsync: a short write raises OSError)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            counted = _Counted(handle)
            yield counted
            handle.flush()
            os.fsync(handle.fileno())
            _check_whole(handle, counted.end)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Counted:
    """A binary file that records how far its writes reached, and hides its descriptor:
    writers that find a ``fileno()`` (Pillow's encoders) call ``os.write`` on it and ignore a
    short count, which a full disk or a file-size limit returns; without one they go through
    ``write``, which retries short writes and raises on errors."""

    def __init__(self, handle: BinaryIO):
        self._handle, self.end = handle, 0

    def write(self, data) -> int:
        count = self._handle.write(data)
        self.end = max(self.end, self._handle.tell())
        return count

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def _check_whole(handle: BinaryIO, written: int) -> None:
    """The file on disk holds every byte written to it."""
    on_disk = os.fstat(handle.fileno()).st_size
    if on_disk < written:
        raise OSError(errno.EIO, f"short write: {on_disk:,} of {written:,} bytes on disk")


class NotRegularFile(OSError):
    """A path that is not a regular file once its links are followed (``open_regular``)."""

    def __init__(self, reason: str):
        super().__init__(errno.EINVAL, reason)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, for a message: "a FIFO", "a socket", "a folder"..."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def not_regular(path: Path) -> str | None:
    """Why ``path`` (its links followed) is not a regular file to read, else None. Never
    blocks and never raises: a FIFO, a device, a socket, a symlink loop, a broken link."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return "a broken symlink"
        return exc.strerror or str(exc)
    return None if stat.S_ISREG(mode) else f"{file_kind(mode)}, not a regular file"


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading when it is a regular file; NotRegularFile (an OSError) when
    it is a FIFO, a device, a socket or a folder. The open does not block (O_NONBLOCK: a FIFO
    with no writer would wait for ever) and the check is on the opened file (fstat), so the
    path cannot be swapped for a FIFO in between."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile("a symlink loop") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{file_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_lock(path: Path) -> BinaryIO:
    """A lock file opened for update, created when missing, never through a symlink
    (``O_NOFOLLOW``: a link planted at the lock's name would have its target truncated);
    NotRegularFile for a link, a FIFO or anything else that is not a regular file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise NotRegularFile("a symlink; lock files are never followed") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{file_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+")
    except BaseException:
        os.close(fd)
        raise


def make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; the folders it created, outermost first (for ``remove_created``)."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made by another process meanwhile: not ours to remove
        created.append(folder)
    return created


def remove_created(created: list[Path]) -> None:
    """Remove the folders of ``make_dirs`` that are (still) empty, innermost first."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def make_dirs_under(root: Path, relative: str | Path) -> Path:
    """``root/relative`` as a folder, made one component at a time; an existing component
    that is a symlink (or not a folder) is refused with OSError, so nothing is ever written
    through a link placed inside ``root``."""
    folder = Path(root)
    for part in Path(relative).parts:
        if part in ("", ".", "..", "/"):
            raise OSError(errno.EINVAL, f"{part!r} is not a folder name")
        folder = folder / part
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        info = os.lstat(folder)
        if stat.S_ISLNK(info.st_mode):
            raise OSError(errno.ELOOP, f"{folder} is a symlink; gunctl never writes through one")
        if not stat.S_ISDIR(info.st_mode):
            raise OSError(errno.ENOTDIR, f"{folder} exists and is not a folder")
    return folder


def read_document(path: Path, document_format: str, what: str, missing_hint: str) -> dict:
    """A JSON file that gunctl wrote (its ``format`` field says which kind); DataError if not."""
    if not path.exists():
        raise DataError(f"{path}: no {what}; {missing_hint}")
    try:
        document = json.loads(read_bounded(open_regular(path), MAX_DOCUMENT_BYTES).decode("utf-8"))
    except TooLarge as exc:
        raise DataError(f"{path}: unreadable {what} ({exc})") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise DataError(f"{path}: unreadable {what} ({first_line(exc, 160)})") from None
    except RecursionError:
        raise DataError(f"{path}: unreadable {what} (nested too deeply)") from None
    if not isinstance(document, dict) or document.get("format") != document_format:
        raise DataError(f"{path}: not a gunctl {what}")
    return document


def write_bytes_atomic(path: Path, data: bytes) -> None:
    try:
        with atomic_open(path) as handle:
            handle.write(data)
    except OSError as exc:
        raise cannot_write(path, exc) from None


def write_with(path: Path, writer: Callable[[BinaryIO], None]) -> None:
    """Atomically write ``path`` by calling ``writer(handle)``; OSErrors become OutputError."""
    try:
        with atomic_open(path) as handle:
            writer(handle)
    except OSError as exc:
        raise cannot_write(path, exc) from None


def _size(count: int) -> str:
    return f"{count / 2**20:g} MiB" if count >= 2**20 else f"{count:,} bytes"


def load_yaml(text: str):
    """PyYAML's ``safe_load`` without aliases and within Python's recursion limit: a few lines
    of anchors (``&a``, ``*a``) make a structure of billions of nodes once walked or shown, and
    deep nesting overflows the composer. Both raise ``yaml.YAMLError``, as bad syntax does."""
    import yaml

    try:
        return yaml.load(text, Loader=_no_alias_loader())
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


@functools.cache
def _no_alias_loader():
    """Built on first use: PyYAML stays out of the CLI's start-up."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not accepted", mark
                )
            return super().compose_node(parent, index)

    return NoAliasLoader
