"""Everything gunctl shows a person: the Rich consoles, tables and progress displays.

Human output goes to stdout; warnings and errors go to stderr. Under ``--json`` only the
JSON object goes to stdout (``json.dumps`` escapes control characters). NO_COLOR is honoured
by Rich itself.

Everything a user, a file name, a label or a checkpoint controls goes through ``escape``
before it reaches the terminal: Rich markup is escaped (``[/]`` is text, not a closing tag),
emoji codes are off (``:fire:`` stays text), and control characters, escape sequences, line
breaks and bidirectional overrides are shown as Python writes them (``\x1b``, ``\n``,
``\u202e``), so a name can neither drive the terminal nor split a message.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from gunctl.config import LOSS_KEYS
from gunctl.core.callbacks import Callback


def _width(stream) -> int | None:
    """Rich's own width on a terminal; COLUMNS or 120 in logs and pipes (Rich would use 80)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return None if stream.isatty() else 120


console = Console(highlight=False, emoji=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, emoji=False, width=_width(sys.stderr))
# Control (Cc), format (Cf: bidi overrides, zero-width), lone surrogates (Cs), private use,
# unassigned, and the Unicode line and paragraph separators.
_SHOWN_ESCAPED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def escape(value: object) -> str:
    """``value`` as inert text for a Rich console: markup escaped, control characters visible."""
    from rich.markup import escape as escape_markup

    text = str(value)
    if not text.isprintable():
        text = "".join(_visible(char) for char in text)
    return escape_markup(text)


def _visible(char: str) -> str:
    if unicodedata.category(char) in _SHOWN_ESCAPED:
        return char.encode("unicode_escape", "backslashreplace").decode("ascii")
    return char


def refresh_width() -> None:
    """Re-read COLUMNS (set after import, e.g. by a test runner or an embedding program)."""
    for target, stream in ((console, sys.stdout), (err_console, sys.stderr)):
        width = _width(stream)
        if width is not None:
            target.width = width


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, markup=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    err_console.print(escape(message), soft_wrap=True, style="dim")


def say(message: str) -> None:
    """A plain line on stdout; ``message`` is escaped (it may hold paths and names)."""
    console.print(escape(message), soft_wrap=True)


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def ingest_table(report) -> Table:
    title = f"Ingested {escape(report.source)}"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("images", report.images),
        ("label files", report.images),
        ("boxes", report.boxes),
        ("images without boxes", report.empty_images),
        ("images converted to RGB", report.converted),
        ("image widths (px)", _span(size_ranges(report)["width"])),
        ("image heights (px)", _span(size_ranges(report)["height"])),
        ("problems", len(report.problems)),
    ]
    rows.insert(0, ("format", report.source_format))
    rows.insert(4, ("classes", escape(", ".join(report.class_names))))
    if len(report.class_names) > 1:
        per_class = ", ".join(f"{k} {v}" for k, v in report.boxes_per_class.items())
        rows.insert(5, ("boxes per class", escape(per_class)))
    extra = (
        ("boxes of classes left out (--classes)", sum(report.classes_left_out.values())),
        ("crowd boxes left out (COCO iscrowd)", report.crowd_left_out),
        ("difficult boxes kept (Pascal VOC)", report.difficult),
    )
    rows += [(name, value) for name, value in extra if value]
    if report.version is not None:
        rows.insert(0, ("version", report.version))
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def problems_table(report) -> Table | None:
    from gunctl.core.labels import PROBLEM_KINDS

    if not report.problems:
        return None
    table = Table(title="Problems by kind", title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("what gunctl did")
    for kind, count in sorted(report.problem_counts().items()):
        table.add_row(kind, str(count), PROBLEM_KINDS[kind])
    return table


def size_ranges(report) -> dict[str, list[int] | None]:
    """The range of image widths and of heights (the largest by area hides both)."""
    entries = [e for e in report.entries if "width" in e and "height" in e]
    return {
        key: [min(e[key] for e in entries), max(e[key] for e in entries)] if entries else None
        for key in ("width", "height")
    }


def _span(values) -> str:
    return f"{values[0]} to {values[1]}" if values else "-"


def print_path(label: str, path) -> None:
    """A path on one line whatever the width (the terminal wraps it, Rich does not break it)."""
    console.print(f"{label} {escape(path)}", soft_wrap=True)


def split_table(counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title="Split", title_justify="left")
    table.add_column("part")
    table.add_column("images", justify="right")
    table.add_column("boxes", justify="right")
    for part, values in counts.items():
        table.add_row(part, str(values["images"]), str(values["boxes"]))
    total_images = sum(v["images"] for v in counts.values())
    total_boxes = sum(v["boxes"] for v in counts.values())
    table.add_row("all", str(total_images), str(total_boxes), style="bold")
    return table


@contextlib.contextmanager
def task_progress(
    description: str, enabled: bool = True
) -> Iterator[Callable[[int, int], None] | None]:
    """A transient progress bar on a terminal; yields its update(done, total) or None."""
    if not enabled or not console.is_terminal:
        yield None
        return
    with _progress(transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _progress(*fields: str, transient: bool = False, eta: bool = True):
    """gunctl's progress bar: description, bar, done/total, the given text fields, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(field) for field in fields),
        *([TimeRemainingColumn()] if eta else []),
        console=console,
        transient=transient,
    )


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _parts(metrics: dict) -> str:
    return " ".join(_num(metrics.get(k)) for k in LOSS_KEYS)


def epoch_line(record: dict, epochs: int) -> str:
    """One plain line per epoch, for logs and pipes."""
    train, val = record["train"], record["val"]
    return (
        f"epoch {record['epoch']}/{epochs}  train loss {_num(train.get('loss'))} "
        f"(cls/box/obj/rpn {_parts(train)})  val loss {_num(val.get('loss'))} "
        f"(cls/box/obj/rpn {_parts(val)})  mAP@0.5 {_num(val.get('map_50'))}  "
        f"mAP {_num(val.get('map'))}  lr {record['lr']:.2e}  {record['seconds']:.1f}s  "
        f"{train.get('images_per_s', 0):.1f} img/s"
    )


_PARTS_MIN_WIDTH = 130  # below it the four losses per part would wrap into a column each


def epoch_table(width: int | None = None) -> Table:
    """The per-epoch table; the cls/box/obj/rpn columns only where they fit on one line."""
    parts = (width or console.width) >= _PARTS_MIN_WIDTH
    table = Table(title="Training", title_justify="left")
    for name, justify in (
        ("epoch", "right"),
        ("train loss", "right"),
        *([("cls / box / obj / rpn", "left")] if parts else []),
        ("val loss", "right"),
        *([("cls / box / obj / rpn", "left")] if parts else []),
        ("mAP@.5", "right"),
        ("mAP", "right"),
        ("lr", "right"),
        ("time", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)
    return table


def add_epoch_row(table: Table, record: dict, epochs: int) -> None:
    train, val = record["train"], record["val"]
    parts = len(table.columns) > 7
    table.add_row(
        f"{record['epoch']}/{epochs}",
        _num(train.get("loss")),
        *([_parts(train)] if parts else []),
        _num(val.get("loss")),
        *([_parts(val)] if parts else []),
        _num(val.get("map_50")),
        _num(val.get("map")),
        f"{record['lr']:.1e}",
        f"{record['seconds']:.1f}s",
    )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def batch_words(batch_size: int, world_size: int) -> str:
    """'batch 2 (2 per process x 1 process)': the global batch and where it comes from."""
    processes = "1 process" if world_size == 1 else f"{world_size} processes"
    return f"batch {batch_size * world_size} ({batch_size} per process x {processes})"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainDisplay(Callback):
    """Progress bar and loss table on a terminal; one plain line per epoch otherwise.

    The bar counts images (its rate is images/s, its ETA from gunctl's own step times, so it
    shows after the first step); the epoch table appears once the first epoch has a row.
    """

    def __init__(self, live: bool | None = None):
        self.live_mode = console.is_terminal if live is None else live
        self.table = None  # made at the start, for the terminal's width then
        self.progress = None
        self.live = None
        self.task = None
        self.speed = 0.0
        self.images = 0

    def on_fit_start(self, state) -> None:
        config = state.config
        resumed = (
            f", resumed from {state.resumed_from} at epoch {state.epoch + 1}"
            if state.resumed_from
            else ""
        )
        resumed = escape(resumed)
        console.print(
            f"run [bold]{escape(state.run_name)}[/]: {escape(config.model.name)}, weights "
            f"{escape(state.weights_origin)}{escape(resumed)}",
            soft_wrap=True,
        )
        console.print(
            f"{state.train_images} train / {len(state.val_dataset)} val images, "
            f"{batch_words(config.batch_size, state.world_size)}, "
            f"{_length(config)} on {state.device} ({state.precision}), recipe {config.recipe}",
            soft_wrap=True,
        )
        self.table = epoch_table()
        self.table.title = f"Training (recipe {config.recipe})"
        if not self.live_mode:
            return
        from rich.live import Live

        self.progress = _progress("{task.fields[speed]}", "{task.fields[loss]}", eta=False)
        self.live = Live(self.progress, console=console, refresh_per_second=4)
        self.live.start()

    def _epoch_images(self, state) -> int:
        per_step = state.config.batch_size * state.world_size
        return min(state.train_images, state.batches_per_epoch * per_step) or 1

    def on_epoch_start(self, state) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        total = self._epoch_images(state)
        per_step = state.config.batch_size * state.world_size
        self.images = min(total, state.batches_done * per_step)
        self.task = self.progress.add_task(
            f"epoch {state.epoch + 1}/{state.config.epochs}",
            total=total,
            completed=self.images,
            speed="",
            loss="",
        )

    def on_step_end(self, state, step) -> None:
        if self.progress is None:
            return
        current = step.images / step.seconds if step.seconds else 0.0
        self.speed = current if not self.speed else 0.8 * self.speed + 0.2 * current
        loss = state.meter.means()["loss"] if state.meter else step.losses["loss"]
        total = self._epoch_images(state)
        self.images = min(total, self.images + step.images)
        eta = (total - self.images) / self.speed if self.speed else None
        self.progress.update(
            self.task,
            completed=self.images,
            speed=f"{self.speed:.1f} img/s" + (f"  eta {_clock(eta)}" if eta is not None else ""),
            loss=f"loss {loss:.3f}",
        )

    def on_validation_start(self, state, images: int) -> None:
        if self.progress is None:
            return
        self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task("validating", total=images, speed="", loss="")

    def on_validation_batch(self, state, images: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, images)

    def on_epoch_end(self, state, record, result) -> None:
        add_epoch_row(self.table, record, state.config.epochs)
        if self.live is not None and self.table.row_count == 1:
            from rich.console import Group

            self.live.update(Group(self.table, self.progress))
        if not self.live_mode:
            console.print(epoch_line(record, state.config.epochs), soft_wrap=True, markup=False)

    def on_fit_end(self, state) -> None:
        self._stop()

    def on_exception(self, state, exc, resumable) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.live is not None:
            if self.task is not None:
                self.progress.update(self.task, visible=False)
            self.live.stop()
            self.live = None


def _length(config) -> str:
    if config.minutes is not None and not config.resume:
        return f"{config.minutes:g} minutes (epochs fitted as it goes)"
    return _plural(config.epochs, "epoch")


def fit_summary(result) -> Table:
    table = Table(title="Result", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    best = (
        f"{result.best_metric:.4f} (epoch {result.best_epoch})"
        if result.best_metric is not None
        else "-"
    )
    last = result.history[-1] if result.history else None
    images = sum(r["train"]["images"] for r in result.history) if result.history else 0
    train_seconds = sum(r["train"]["seconds"] for r in result.history) if result.history else 0.0
    rows = [
        ("run", result.run_name),
        ("weights", result.weights_origin),
        ("best val mAP@0.5", best),
        ("final val mAP@0.5:0.95", _num(last["val"].get("map"), 4) if last else "-"),
        ("last checkpoint", str(result.last_checkpoint)),
        ("best checkpoint", str(result.best_checkpoint or "-")),
        ("default model", result.promotion or str(result.model_copy or "-")),
        ("TensorBoard", f"{result.run_dir}  (gunctl tb)"),
        ("wall time", f"{result.seconds:.1f} s"),
        *([("stopped early", result.stopped_early)] if result.stopped_early else []),
        ("train images/s", f"{images / train_seconds:.2f}" if train_seconds else "-"),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


def validation_table(result, score_threshold: float) -> Table:
    from gunctl.config import LOSS_KEYS

    m, facts = result.metrics, result.facts
    table = Table(
        title=f"Validation of {escape(result.checkpoint)}", show_header=False, title_justify="left"
    )
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("model", facts["model"]),
        ("epoch", str(facts["epoch"]) + (" (interrupted)" if facts.get("interrupted") else "")),
        ("run", facts.get("run") or "-"),
        ("weights origin", facts.get("weights_origin") or "-"),
        ("classes", ", ".join(facts.get("class_names") or ["gun"])),
        ("data", result.data),
        ("mAP@0.5:0.95", _num(m.get("map"), 4)),
        ("mAP@0.5", _num(m.get("map_50"), 4)),
        ("mAP@0.75", _num(m.get("map_75"), 4)),
        ("mAR@100", _num(m.get("mar_100"), 4)),
        (f"precision @ score {score_threshold}, IoU 0.5", _num(m.get("precision"), 4)),
        (f"recall @ score {score_threshold}, IoU 0.5", _num(m.get("recall"), 4)),
        (f"F1 @ score {score_threshold}, IoU 0.5", _num(m.get("f1"), 4)),
        *((f"val {key}", _num(m.get(key), 4)) for key in LOSS_KEYS),
        ("val loss (total)", _num(m.get("loss"), 4)),
        ("images", str(m.get("images"))),
        ("boxes", str(m.get("boxes"))),
        ("images/s (detection)", f"{m.get('images_per_s', 0):.2f}"),
        ("time (s), of which mAP", f"{m.get('seconds', 0):.2f}, {m.get('map_seconds', 0):.2f}"),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


def tta_table(result) -> Table:
    """Plain against flip-TTA detection scores (score_table holds the rest)."""
    table = Table(title="With flip TTA (box fusion)", title_justify="left")
    for name in ("", "plain", "flip TTA"):
        table.add_column(name, justify="right" if name else "left")
    for key, label in (("map", "mAP@0.5:0.95"), ("map_50", "mAP@0.5"), ("map_75", "mAP@0.75")):
        table.add_row(label, _num(result.metrics.get(key), 4), _num(result.tta.get(key), 4))
    for key in ("precision", "recall", "f1"):
        table.add_row(key, _num(result.metrics.get(key), 4), _num(result.tta.get(key), 4))
    return table


def class_table(per_class: dict | None, title: str = "Per class") -> Table | None:
    """mAP@0.5 and mAP@0.5:0.95 per class (None when there are no per-class figures, or one
    class only: its figures are the overall ones, already shown)."""
    if not per_class or len(per_class) < 2:
        return None
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    table.add_column("mAP@0.5", justify="right")
    table.add_column("mAP@0.5:0.95", justify="right")
    for name, values in per_class.items():
        table.add_row(
            escape(name),
            str(values.get("boxes", "-")),
            _num(values.get("map_50"), 4),
            _num(values.get("map"), 4),
        )
    return table


_RUN_COLUMNS = ("started (UTC)", "model", "epochs", "train loss", "best mAP@.5", "checkpoint")
_DROP_FIRST = ("model", "train loss", "started (UTC)", "checkpoint", "epochs")  # when narrow


def runs_table(runs_dir, runs) -> Table:
    """One row per run. The run name is never cut (it is what --resume takes): on a narrow
    terminal the less important columns are left out instead (--json has them all). The
    checkpoint is named relative to the run folder (best.pth: the one to validate)."""
    rows = [
        {
            "run": escape(run.name),
            "started (UTC)": run.start.strftime("%Y-%m-%d %H:%M") if run.start else "-",
            "model": escape((run.model or "-").removeprefix("fasterrcnn_")),
            "epochs": str(run.epochs) if run.epochs is not None else "-",
            "train loss": _num(run.final_train_loss),
            "best mAP@.5": _num(run.best_map50),
            "checkpoint": run.checkpoint.name if run.checkpoint else "-",
        }
        for run in runs
    ]
    shown = ["run", *_RUN_COLUMNS]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in shown}
    dropped = []
    for column in _DROP_FIRST:
        if sum(widths[c] + 3 for c in shown) + 1 <= console.width:
            break
        shown.remove(column)
        dropped.append(column)
    table = Table(title="Runs", title_justify="left", caption_justify="left")
    for column in shown:
        right = column in ("epochs", "train loss", "best mAP@.5")
        table.add_column(column, justify="right" if right else "left", no_wrap=column == "run")
    for row in rows:
        table.add_row(*(row[c] for c in shown))
    if not runs:
        table.caption = "no runs yet: `gunctl train` writes them"
    elif dropped:
        table.caption = f"not shown at this width: {', '.join(dropped)} (see --json)"
    return table


def show_predict_summary(result) -> None:
    """A table on a terminal; ``what: value`` lines in logs and pipes."""
    rows = [
        ("files", str(result.files)),
        ("video frames", str(result.frames)),
        ("images or frames with a detection", str(result.with_detection)),
        ("detections", str(result.detections)),
        ("score threshold", f"{result.threshold:.3f}"),
        ("images/s", f"{result.images_per_s:.2f}"),
        ("problems", str(len(result.problems))),
        ("output", str(result.out or "-")),
    ]
    if not console.is_terminal:
        for name, value in rows:
            console.print(f"{name}: {escape(value)}", soft_wrap=True)
        return
    table = Table(title="Predictions", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, escape(value))
    console.print(table)


def show_export(result) -> None:
    ratio = result.bytes / result.checkpoint_bytes if result.checkpoint_bytes else 0.0
    console.print(
        f"wrote {escape(str(result.path))} ({result.format}, {result.bytes / 2**20:.1f} MiB, "
        f"{ratio:.0%} of the checkpoint; classes {escape(', '.join(result.class_names[1:]))}; "
        f"score threshold {result.threshold:.3f})",
        soft_wrap=True,
    )
    if result.max_box_diff is not None:
        console.print(
            f"checked in onnxruntime: boxes within {result.max_box_diff:.4f} px, scores within "
            f"{result.max_score_diff:.1e} of PyTorch",
            soft_wrap=True,
        )
