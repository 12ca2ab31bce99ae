"""The ``raw/`` tree's lock, and its replacement that survives ``kill -9`` at any moment.

Lock: ``<out>/.raw.lock`` (flock, released by the kernel when the process ends, even by
kill -9). ``ingest`` holds it exclusively; ``split``, ``train`` and ``validate`` hold it
shared for as long as they read ``raw/``. Nobody waits: a command that cannot get it is
refused with one line (exit 2), so two ingests never both "succeed" and ``ingest --force``
never changes the images under a running training.

Replacement (``swap_into_place``, under the exclusive lock): rename ``raw`` to ``.raw-old``,
rename the staged tree to ``raw``, delete ``.raw-old``. Each rename is atomic, so after a
crash either ``raw`` exists (the old or the new tree, complete), or only ``.raw-old`` does;
``recover`` (run by whoever next takes the lock) renames it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from gunctl.config import Layout
from gunctl.core.fileio import NotRegularFile, open_lock, open_regular
from gunctl.errors import OutputError, RunLockedError

log = logging.getLogger("gunctl")
LOCK_NAME = ".raw.lock"
ASIDE_NAME = ".raw-old"  # the previous raw/ while the new one is renamed into place


class RawLock:
    """``with RawLock(layout, exclusive=True):`` for ingest; ``exclusive=False`` for readers."""

    def __init__(self, layout: Layout, exclusive: bool, command: str = "gunctl"):
        self.layout = layout
        self.exclusive = exclusive
        self.command = command
        self.path = Path(layout.root) / LOCK_NAME
        self._handle = None
        self._created = False

    def __enter__(self) -> RawLock:
        import fcntl

        handle = self._open()
        if handle is None:  # a read-only output root that no ingest can change either
            return self
        if not self.exclusive and _needs_recovery(self.layout):
            with contextlib.suppress(BlockingIOError):  # another process may be recovering
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                recover(self.layout)
        try:
            fcntl.flock(
                handle, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            )
        except BlockingIOError:
            handle.close()
            raise RunLockedError(self._busy_message()) from None
        self._handle = handle
        if self.exclusive:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{self.command} (pid {os.getpid()})\n")
            handle.flush()
            recover(self.layout)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            if self._created and not _exists(self.layout.raw):  # e.g. train with no data yet
                self.path.unlink(missing_ok=True)  # while held: leaves nothing behind
            self._handle.close()
            self._handle = None

    def _open(self):
        """The lock file, held for the whole command; never through a symlink (a link planted
        at its name is refused, its target untouched: ``fileio.open_lock``)."""
        self._created = not os.path.lexists(self.path)
        try:
            return open_lock(self.path)
        except NotRegularFile as exc:
            raise OutputError(f"{self.path}: {exc.strerror}; remove it") from None
        except OSError as exc:
            if self.exclusive:
                raise OutputError(
                    f"{self.path.parent}: cannot write ({exc.strerror or exc})"
                ) from None
        try:
            return open_regular(self.path)  # a read-only root: a shared lock still works
        except OSError:
            return None

    def _busy_message(self) -> str:
        raw = self.layout.raw
        if self.exclusive:
            return (
                f"{raw}: in use by another gunctl command (split, train, validate or ingest); "
                "wait for it to end"
            )
        try:
            holder = self.path.read_text().strip() or "another gunctl ingest"
        except OSError:
            holder = "another gunctl ingest"
        return f"{raw}: being replaced by {holder}; wait for it to end"


def swap_into_place(stage: Path, raw: Path) -> None:
    """Make ``stage`` the new ``raw`` (caller holds the exclusive lock and ran ``recover``)."""
    aside = raw.with_name(ASIDE_NAME)
    if _exists(raw):
        os.replace(raw, aside)
        _sync_dir(raw.parent)
    try:
        os.replace(stage, raw)
    except OSError:
        if _exists(aside):
            os.replace(aside, raw)
        raise
    _sync_dir(raw.parent)
    _remove(aside)


def recover(layout: Layout) -> None:
    """Finish an interrupted swap: restore ``.raw-old`` when ``raw`` is missing, else drop it.

    Also restores the ``.raw-old-<pid>`` folder that versions before 0.2 left behind.
    """
    raw = layout.raw
    asides = [raw.with_name(ASIDE_NAME), *sorted(raw.parent.glob(ASIDE_NAME + "-*"))]
    for aside in asides:
        if not _exists(aside):
            continue
        if not _exists(raw):
            os.replace(aside, raw)
            _sync_dir(raw.parent)
            log.warning("restored %s from %s (an ingest was interrupted)", raw, aside.name)
        else:
            _remove(aside)


def replaceable(raw: Path) -> bool:
    """Whether ``raw`` is a gunctl raw tree (so that ``--force`` may replace it)."""
    return (raw / "manifest.json").is_file() or not _exists(raw)


def _needs_recovery(layout: Layout) -> bool:
    raw = layout.raw
    return not _exists(raw) and any(
        _exists(p) for p in (raw.with_name(ASIDE_NAME), *raw.parent.glob(ASIDE_NAME + "-*"))
    )


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _sync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (a power cut, not only kill -9)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
