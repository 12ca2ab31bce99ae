"""The events of a watch: ``events.jsonl`` and the tracks' best-frame snapshots.

``events.jsonl`` is append-only: each event is one line, written with one ``write`` call,
flushed and fsynced before the next, so a ``kill -9`` leaves every event before it whole (at
most the line being written is cut, and readers skip a last line without its newline).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gunctl.core.fileio import write_with

EVENTS = "events.jsonl"
SNAPSHOTS = "snapshots"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event(kind: str, source: str, **fields) -> dict:
    """An event: a fresh id (the sinks' idempotency key), its kind, source and wall time."""
    return {"id": uuid.uuid4().hex, "event": kind, "source": source, "time": now_iso(), **fields}


class EventLog:
    """Appends events to ``<out>/events.jsonl``, one fsynced line each."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / EVENTS
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(self.path, flags, 0o644)
        self.count = 0

    def write(self, event: dict) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # a short write (disk full): finish it or fail loudly
            view = memoryview(line)[written:]
            while view:
                view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        self.count += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(path: Path) -> list[dict]:
    """The whole lines of an events.jsonl (a last line cut by a kill is left out)."""
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


class Snapshots:
    """A track's best frame as ``<out>/snapshots/<run>/<source>-<track>.jpg`` (clean) and
    ``...-annotated.jpg`` (its box, class and score drawn), replaced when the best improves."""

    def __init__(self, out: Path, run: str):
        self.root, self.run = out, run
        self.folder = out / SNAPSHOTS / run

    def save(self, source: str, track: int, pixels: np.ndarray, box, label: str, score: float):
        from PIL import Image

        from gunctl.core.draw import annotate
        from gunctl.core.fileio import make_dirs_under

        self.root.mkdir(parents=True, exist_ok=True)
        make_dirs_under(self.root, Path(SNAPSHOTS) / self.run)  # never through a link
        stem = f"{source}-{track}"
        clean = Image.fromarray(pixels)
        drawn = clean.copy()
        annotate(drawn, [list(box)], [score], [label], score)
        paths = {}
        for kind, image, name in (
            ("clean", clean, f"{stem}.jpg"),
            ("annotated", drawn, f"{stem}-annotated.jpg"),
        ):
            write_with(self.folder / name, lambda h, im=image: im.save(h, "JPEG", quality=90))
            paths[kind] = str(Path(SNAPSHOTS) / self.run / name)
        return paths
