"""The live training display: a progress bar and the epoch table on a terminal, one plain
line per epoch in logs and pipes, and the result table at the end of a run."""

from __future__ import annotations

from rich.table import Table

from gunctl.cli.console import console, escape, key_value_table, number, plural, progress_bar
from gunctl.config import ALL_LOSS_KEYS, FAMILY_LOSSES, LOSS_KEYS, LOSS_LABELS, model_family
from gunctl.core.callbacks import Callback

_PARTS_MIN_WIDTH = 130  # below it the four losses per part would wrap into a column each


def loss_keys(*metrics: dict) -> tuple[str, ...]:
    """The model's own losses that the records hold (each family has its own: FAMILY_LOSSES);
    Faster R-CNN's when they hold none."""
    found = tuple(k for k in ALL_LOSS_KEYS if any(m.get(k) is not None for m in metrics))
    return found or LOSS_KEYS


def _parts(metrics: dict, keys: tuple[str, ...]) -> str:
    return " ".join(number(metrics.get(k)) for k in keys)


def _labels(keys: tuple[str, ...], separator: str = "/") -> str:
    return separator.join(LOSS_LABELS[k] for k in keys)


def epoch_line(record: dict, epochs: int) -> str:
    """One plain line per epoch, for logs and pipes."""
    train, val = record["train"], record["val"]
    keys = loss_keys(train, val)
    return (
        f"epoch {record['epoch']}/{epochs}  train loss {number(train.get('loss'))} "
        f"({_labels(keys)} {_parts(train, keys)})  val loss {number(val.get('loss'))} "
        f"({_labels(keys)} {_parts(val, keys)})  mAP@0.5 {number(val.get('map_50'))}  "
        f"mAP {number(val.get('map'))}  lr {record['lr']:.2e}  {record['seconds']:.1f}s  "
        f"{train.get('images_per_s', 0):.1f} img/s"
    )


def epoch_table(width: int | None = None, model: str | None = None) -> Table:
    """The per-epoch table; the model's loss columns (Faster R-CNN: cls / box / obj / rpn)
    only where they fit on one line."""
    parts = (width or console.width) >= _PARTS_MIN_WIDTH
    label = _labels(FAMILY_LOSSES[model_family(model)] if model else LOSS_KEYS, " / ")
    table = Table(title="Training", title_justify="left")
    for name, justify in (
        ("epoch", "right"),
        ("train loss", "right"),
        *([(label, "left")] if parts else []),
        ("val loss", "right"),
        *([(label, "left")] if parts else []),
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
    keys = loss_keys(train, val)
    table.add_row(
        f"{record['epoch']}/{epochs}",
        number(train.get("loss")),
        *([_parts(train, keys)] if parts else []),
        number(val.get("loss")),
        *([_parts(val, keys)] if parts else []),
        number(val.get("map_50")),
        number(val.get("map")),
        f"{record['lr']:.1e}",
        f"{record['seconds']:.1f}s",
    )


def batch_words(batch_size: int, world_size: int) -> str:
    """'batch 2 (2 per process x 1 process)': the global batch and where it comes from."""
    processes = "1 process" if world_size == 1 else f"{world_size} processes"
    return f"batch {batch_size * world_size} ({batch_size} per process x {processes})"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _length(config) -> str:
    if config.minutes is not None and not config.resume:
        return f"{config.minutes:g} minutes (epochs fitted as it goes)"
    return plural(config.epochs, "epoch")


def run_header(state) -> list[str]:
    """The two lines that open a run (Rich markup; every name in them escaped once)."""
    config = state.config
    resumed = (
        f", resumed from {escape(state.resumed_from)} at epoch {state.epoch + 1}"
        if state.resumed_from
        else ""
    )
    return [
        f"run [bold]{escape(state.run_name)}[/]: {escape(config.model.name)}, weights "
        f"{escape(state.weights_origin)}{resumed}",
        f"{state.train_images} train / {len(state.val_dataset)} val images, "
        f"{batch_words(config.batch_size, state.world_size)}, "
        f"{_length(config)} on {state.device} ({state.precision}), recipe {config.recipe}",
    ]


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
        for line in run_header(state):
            console.print(line, soft_wrap=True)
        self.table = epoch_table(model=state.config.model.name)
        self.table.title = f"Training (recipe {state.config.recipe})"
        if not self.live_mode:
            return
        from rich.live import Live

        self.progress = progress_bar("{task.fields[speed]}", "{task.fields[loss]}", eta=False)
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


def _best_record(result) -> dict | None:
    """The val figures of the best epoch (None when it has none)."""
    for record in result.history or []:
        if record.get("epoch") == result.best_epoch and isinstance(record.get("val"), dict):
            return record["val"]
    return None


def fit_summary(result) -> Table:
    """The result of a run: where its checkpoints are, its best figure, its speed."""
    best = (
        f"{result.best_metric:.4f} (epoch {result.best_epoch})"
        if result.best_metric is not None
        else "-"
    )
    best_val = _best_record(result)
    if best_val is not None and best_val.get("map_50_ci"):
        from gunctl.cli.validate import with_interval

        # the figure was chosen as the best of several validations on these images: the
        # interval says how much it moves with the images, not how optimistic the choice is
        best = f"{with_interval(best_val, 'map_50')}, epoch {result.best_epoch}"
    last = result.history[-1] if result.history else None
    images = sum(r["train"]["images"] for r in result.history) if result.history else 0
    train_seconds = sum(r["train"]["seconds"] for r in result.history) if result.history else 0.0
    rows = [
        ("run", result.run_name),
        ("weights", result.weights_origin),
        ("best val mAP@0.5", best),
        ("final val mAP@0.5:0.95", number(last["val"].get("map"), 4) if last else "-"),
        ("last checkpoint", str(result.last_checkpoint)),
        ("best checkpoint", str(result.best_checkpoint or "-")),
        ("default model", result.promotion or str(result.model_copy or "-")),
        ("TensorBoard", f"{result.run_dir}  (gunctl tb)"),
        ("wall time", f"{result.seconds:.1f} s"),
        *([("stopped early", result.stopped_early)] if result.stopped_early else []),
        ("train images/s", f"{images / train_seconds:.2f}" if train_seconds else "-"),
    ]
    return key_value_table("Result", rows, justify="left")
