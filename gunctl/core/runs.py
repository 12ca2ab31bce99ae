"""Find training runs and read them back (for `gunctl tb`), and serve them with TensorBoard."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gunctl.config import RUN_SORT_KEYS, Layout, check_choice
from gunctl.errors import UsageError


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    start: datetime | None  # the first event's wall time
    model: str | None
    epochs: int | None  # completed, from the last checkpoint
    final_train_loss: float | None  # train/loss of the last epoch logged
    best_map50: float | None  # the highest val/map_50 logged
    checkpoint: Path | None  # best.pth when there is one (what to validate), else last.pth
    last_checkpoint: Path | None = None  # what --resume NAME continues from

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "start": self.start.isoformat(timespec="seconds") if self.start else None,
            "model": self.model,
            "epochs": self.epochs,
            "final_train_loss": self.final_train_loss,
            "best_map50": self.best_map50,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
        }


def list_runs(runs_dir: Path, sort: str = "start") -> list[RunInfo]:
    """Every folder of ``runs_dir`` with TensorBoard events or a checkpoint, sorted."""
    check_choice("--sort", sort, RUN_SORT_KEYS)
    if not runs_dir.is_dir():
        return []
    runs = [
        read_run(path)
        for path in sorted(runs_dir.iterdir())
        if path.is_dir()
        and (any(path.glob("events.out.tfevents.*")) or (path / Layout.LAST).exists())
    ]
    return sorted(runs, key=_sort_key(sort), reverse=sort in ("map50", "epochs", "start"))


def read_run(path: Path) -> RunInfo:
    scalars, start = _read_events(path)
    last = path / Layout.LAST if (path / Layout.LAST).exists() else None
    best = path / Layout.BEST if (path / Layout.BEST).exists() else None
    model, epochs = _read_checkpoint(last or best) if (last or best) else (None, None)
    losses = scalars.get("train/loss", [])
    maps = [value for _, value in scalars.get("val/map_50", [])]
    return RunInfo(
        name=path.name,
        path=path,
        start=start,
        model=model,
        epochs=epochs if epochs is not None else (max(s for s, _ in losses) if losses else None),
        final_train_loss=max(losses)[1] if losses else None,
        best_map50=max(maps) if maps else None,
        checkpoint=best or last,
        last_checkpoint=last,
    )


def _read_events(path: Path) -> tuple[dict[str, list[tuple[int, float]]], datetime | None]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    with _quiet_tensorboard():  # a resumed run has "out of order" steps: purged, as intended
        accumulator.Reload()
    scalars: dict[str, list[tuple[int, float]]] = {}
    first = None
    for tag in ("train/loss", "val/map_50"):
        if tag in accumulator.Tags().get("scalars", []):
            events = accumulator.Scalars(tag)
            by_step = {e.step: e.value for e in events}  # a resumed run may log a step twice
            scalars[tag] = sorted(by_step.items())
            first = min([e.wall_time for e in events] + ([first] if first else []))
    with contextlib.suppress(ValueError):  # ValueError: no events at all
        earliest = accumulator.FirstEventTimestamp()
        first = earliest if first is None else min(first, earliest)
    start = datetime.fromtimestamp(first, tz=timezone.utc) if first else None
    return scalars, start


@contextlib.contextmanager
def _quiet_tensorboard():
    logger = logging.getLogger("tensorboard")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def remove_run(runs_dir: Path, name: str) -> Path:
    """Delete the run ``name`` under ``runs_dir``; refused while a process holds its lock."""
    return remove_runs(runs_dir, [name])[0]


def remove_runs(runs_dir: Path, names: list[str] | tuple[str, ...]) -> list[Path]:
    """Delete the runs ``names`` under ``runs_dir``, all or none: every name is checked (a
    plain name, an existing run folder that is not a link) and every run locked (none is
    training) before the first is removed. Returns their paths."""
    import shutil

    from gunctl.core.runlock import RunLock

    paths = [_run_path(runs_dir, name) for name in dict.fromkeys(names)]
    missing = [str(p) for p in paths if not p.is_dir() or p.is_symlink()]
    if missing:
        raise UsageError(f"no such run: {', '.join(missing)}; nothing was removed")
    with contextlib.ExitStack() as locks:
        for path in paths:  # RunLockedError while a `gunctl train` writes to one of them
            locks.enter_context(RunLock(path))
        for path in paths:
            shutil.rmtree(path)
    return paths


def _run_path(runs_dir: Path, name: str) -> Path:
    if Path(name).name != name or name in ("", ".", ".."):
        raise UsageError(f"{name!r}: a run name, not a path; nothing was removed")
    return runs_dir / name


def _read_checkpoint(path: Path) -> tuple[str | None, int | None]:
    from gunctl.core.checkpoint import load_checkpoint, read_facts
    from gunctl.errors import CheckpointError

    try:
        checkpoint = load_checkpoint(path, mmap=True)  # maps tensors lazily: fast for large models
        facts = read_facts(checkpoint, path)
    except CheckpointError as exc:
        logging.getLogger("gunctl").warning("%s", exc)
        return None, None
    return facts.model, facts.epoch


def _sort_key(sort: str):
    def key(run: RunInfo):
        value = {
            "name": run.name,
            "start": run.start.timestamp() if run.start else 0.0,
            "map50": run.best_map50 if run.best_map50 is not None else -1.0,
            "loss": run.final_train_loss if run.final_train_loss is not None else float("inf"),
            "epochs": run.epochs or 0,
        }[sort]
        return (value, run.name)

    return key


def start_tensorboard(logdir: Path, host: str, port: int) -> str:
    """Start TensorBoard's server in this process (a background thread); returns its URL."""
    from tensorboard import program

    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    board = program.TensorBoard()
    board.configure(
        argv=[
            None,
            "--logdir",
            str(logdir),
            "--host",
            host,
            "--port",
            str(port),
            "--reload_interval",
            "5",
            "--load_fast",
            "false",
        ]
    )
    try:
        return board.launch()
    except program.TensorBoardServerException as exc:
        raise UsageError(
            f"cannot serve on {host}:{port} ({exc.msg}); pass another --port"
        ) from None
