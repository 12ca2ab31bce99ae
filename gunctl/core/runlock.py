"""One writer per run: an exclusive lock on ``<run>/.lock``, released when the process ends
(even by kill -9, so a crashed run never leaves a stale lock)."""

from __future__ import annotations

import os
from pathlib import Path

from gunctl.core.fileio import NotRegularFile, make_dirs, open_lock, remove_created
from gunctl.errors import OutputError, RunLockedError, cannot_write


class RunLock:
    def __init__(self, run_dir: Path, made: list[Path] | None = None):
        """``made``: folders the caller created for this run (removed with it when empty)."""
        self.path = Path(run_dir) / ".lock"
        self._handle = None
        self._made: list[Path] = list(made or [])

    def __enter__(self) -> RunLock:
        import fcntl

        folder = self.path.parent
        if folder.is_symlink():
            raise OutputError(f"{folder}: a symlink; a run folder is never written through one")
        try:
            self._made += make_dirs(folder)  # removed again when the run writes nothing
            handle = open_lock(self.path)  # held for the whole run; never through a symlink
        except NotRegularFile as exc:
            raise OutputError(f"{self.path}: {exc.strerror}; remove it") from None
        except OSError as exc:
            raise cannot_write(self.path.parent, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(
                f"{self.path.parent}: run in use by {holder}; "
                "wait for it or pick another --run-name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._remove_if_empty()  # while still holding the lock
            self._handle.close()
            self._handle = None

    def _remove_if_empty(self) -> None:
        """A run that wrote nothing (it failed before its first file) leaves no folder."""
        folder = self.path.parent
        try:
            if [p.name for p in folder.iterdir()] == [self.path.name]:
                self.path.unlink()
                folder.rmdir()
                remove_created(self._made)  # runs/ and --out too, when this made them
        except OSError:
            pass
