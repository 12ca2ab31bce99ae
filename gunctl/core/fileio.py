"""Atomic writes (a temporary file in the same folder, fsync, then rename over the target),
and bounded reads of untrusted documents (JSON state files, YAML)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
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
    """Yield a binary file that replaces ``path`` only when the block completes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_document(path: Path, document_format: str, what: str, missing_hint: str) -> dict:
    """A JSON file that gunctl wrote (its ``format`` field says which kind); DataError if not."""
    if not path.exists():
        raise DataError(f"{path}: no {what}; {missing_hint}")
    try:
        document = json.loads(read_bounded(path.open("rb"), MAX_DOCUMENT_BYTES).decode("utf-8"))
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
