"""Everything gunctl shows a person: the Rich consoles, tables and progress displays.

Human output goes to stdout; warnings and errors go to stderr. Under ``--json`` only the
JSON object goes to stdout. NO_COLOR is honoured by Rich itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
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


console = Console(highlight=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, width=_width(sys.stderr))


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    err_console.print(_escape(message), soft_wrap=True, style="dim")


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def ingest_table(report) -> Table:
    table = Table(title=f"Ingested {report.source}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("images", report.images),
        ("label files", report.images),
        ("boxes", report.boxes),
        ("images without boxes", report.empty_images),
        ("images converted to RGB", report.converted),
        ("smallest image (w x h)", _size(report.smallest)),
        ("largest image (w x h)", _size(report.largest)),
        ("problems", len(report.problems)),
    ]
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


def split_table(path, counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title="Split", caption=f"{path}", caption_justify="left", title_justify="left")
    table.add_column("part")
    table.add_column("images", justify="right")
    table.add_column("boxes", justify="right")
    for part, values in counts.items():
        table.add_row(part, str(values["images"]), str(values["boxes"]))
    total_images = sum(v["images"] for v in counts.values())
    total_boxes = sum(v["boxes"] for v in counts.values())
    table.add_row("all", str(total_images), str(total_boxes), style="bold")
    return table


def _size(size) -> str:
    return f"{size[0]} x {size[1]}" if size else "-"


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


def _progress(*fields: str, transient: bool = False):
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
        TimeRemainingColumn(),
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


def epoch_table() -> Table:
    table = Table(title="Training", title_justify="left")
    for name, justify in (
        ("epoch", "right"),
        ("train loss", "right"),
        ("cls / box / obj / rpn", "left"),
        ("val loss", "right"),
        ("cls / box / obj / rpn", "left"),
        ("mAP@.5", "right"),
        ("mAP", "right"),
        ("lr", "right"),
        ("time", "right"),
    ):
        table.add_column(name, justify=justify)
    return table


def add_epoch_row(table: Table, record: dict, epochs: int) -> None:
    train, val = record["train"], record["val"]
    table.add_row(
        f"{record['epoch']}/{epochs}",
        _num(train.get("loss")),
        _parts(train),
        _num(val.get("loss")),
        _parts(val),
        _num(val.get("map_50")),
        _num(val.get("map")),
        f"{record['lr']:.1e}",
        f"{record['seconds']:.1f}s",
    )


class TrainDisplay(Callback):
    """Progress bar and loss table on a terminal; one plain line per epoch otherwise."""

    def __init__(self, live: bool | None = None):
        self.live_mode = console.is_terminal if live is None else live
        self.table = epoch_table()
        self.progress = None
        self.live = None
        self.task = None
        self.speed = 0.0

    def on_fit_start(self, state) -> None:
        config = state.config
        resumed = (
            f", resumed from {state.resumed_from} at epoch {state.epoch + 1}"
            if state.resumed_from
            else ""
        )
        console.print(
            f"run [bold]{state.run_name}[/]: {config.model.name} ({state.weights_origin}), "
            f"{state.train_images} train / {len(state.val_dataset)} val images, batch "
            f"{config.batch_size}x{state.world_size}, {config.epochs} epochs on {state.device}"
            f"{resumed}",
            soft_wrap=True,
        )
        if not self.live_mode:
            return
        from rich.console import Group
        from rich.live import Live

        self.progress = _progress("{task.fields[speed]}", "{task.fields[loss]}")
        self.live = Live(Group(self.table, self.progress), console=console, refresh_per_second=4)
        self.live.start()

    def on_epoch_start(self, state) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            f"epoch {state.epoch + 1}/{state.config.epochs}",
            total=state.batches_per_epoch,
            completed=state.batches_done,
            speed="",
            loss="",
        )

    def on_step_end(self, state, step) -> None:
        if self.progress is None:
            return
        current = step.images / step.seconds if step.seconds else 0.0
        self.speed = current if not self.speed else 0.8 * self.speed + 0.2 * current
        loss = state.meter.means()["loss"] if state.meter else step.losses["loss"]
        self.progress.update(
            self.task,
            completed=step.batch,
            speed=f"{self.speed:.1f} img/s",
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
        ("train images/s", f"{images / train_seconds:.2f}" if train_seconds else "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def validation_table(result, score_threshold: float) -> Table:
    from gunctl.config import LOSS_KEYS

    m, facts = result.metrics, result.facts
    table = Table(
        title=f"Validation of {result.checkpoint}", show_header=False, title_justify="left"
    )
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("model", facts["model"]),
        ("epoch", str(facts["epoch"]) + (" (interrupted)" if facts.get("interrupted") else "")),
        ("run", facts.get("run") or "-"),
        ("weights origin", facts.get("weights_origin") or "-"),
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
        table.add_row(name, value)
    return table


def runs_table(runs_dir, runs) -> Table:
    table = Table(title=f"Runs in {runs_dir}", title_justify="left")
    for name, justify in (
        ("run", "left"),
        ("started (UTC)", "left"),
        ("model", "left"),
        ("epochs", "right"),
        ("final train loss", "right"),
        ("best val mAP@0.5", "right"),
        ("checkpoint", "left"),
    ):
        table.add_column(name, justify=justify)
    for run in runs:
        table.add_row(
            run.name,
            run.start.strftime("%Y-%m-%d %H:%M") if run.start else "-",
            (run.model or "-").removeprefix("fasterrcnn_"),
            str(run.epochs) if run.epochs is not None else "-",
            _num(run.final_train_loss),
            _num(run.best_map50),
            str(run.checkpoint or "-"),
        )
    if not runs:
        table.caption = "no runs yet: `gunctl train` writes them"
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
            console.print(f"{name}: {value}", markup=False, soft_wrap=True)
        return
    table = Table(title="Predictions", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, _escape(value))
    console.print(table)


def show_export(result) -> None:
    ratio = result.bytes / result.checkpoint_bytes if result.checkpoint_bytes else 0.0
    console.print(
        f"wrote {_escape(str(result.path))} ({result.format}, {result.bytes / 2**20:.1f} MiB, "
        f"{ratio:.0%} of the checkpoint; classes {_escape(', '.join(result.class_names[1:]))}; "
        f"score threshold {result.threshold:.3f})",
        soft_wrap=True,
    )
    if result.max_box_diff is not None:
        console.print(
            f"checked in onnxruntime: boxes within {result.max_box_diff:.4f} px, scores within "
            f"{result.max_score_diff:.1e} of PyTorch",
            soft_wrap=True,
        )
