"""Side effects of training, as callbacks the trainer fires in a fixed order.

The trainer calls its callbacks in list order: CheckpointSaver first (so that a failing
logger or display cannot lose the epoch), TensorBoardLogger second, then the caller's
(e.g. the CLI's progress display). Only rank 0 gets callbacks under torchrun.

Hooks, in the order they fire:
  on_fit_start -> (on_epoch_start -> on_step_end* -> on_validation_start
  -> on_validation_batch* -> on_epoch_end)* -> on_fit_end;
  on_exception instead of the rest when training stops early.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from gunctl.config import ALL_LOSS_KEYS

if TYPE_CHECKING:
    from gunctl.core.engine import EvalResult, StepInfo
    from gunctl.core.state import TrainState

log = logging.getLogger("gunctl")


class Callback:
    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState, step: StepInfo) -> None: ...
    def on_validation_start(self, state: TrainState, images: int) -> None: ...
    def on_validation_batch(self, state: TrainState, images: int) -> None: ...
    def on_epoch_end(self, state: TrainState, record: dict, result: EvalResult) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def on_exception(self, state: TrainState, exc: BaseException, resumable: bool) -> None:
        """Training stopped early; ``resumable`` when the state is consistent enough to save."""


class CallbackList:
    """Calls a hook on every callback, in list order (see the module's docstring)."""

    def __init__(self, callbacks: list[Callback], state: TrainState):
        self.callbacks, self.state = callbacks, state

    def __call__(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self.state, *args)

    def exception(self, exc: BaseException, resumable: bool) -> None:
        for callback in self.callbacks:
            try:
                callback.on_exception(self.state, exc, resumable)
            except Exception as inner:  # the first error is the one to report
                log.warning("while stopping: %s", inner)


class CheckpointSaver(Callback):
    """``last.pth`` (the full, resumable state) every epoch and on a resumable stop;
    ``best.pth`` (weights only: model, config, class names, metrics) when the selection metric
    improves, and the model copy as a hard link to it (a copy across file systems);
    ``epoch_<E>.pth`` (a hard link to that epoch's ``last.pth``) every ``--save-period`` epochs.
    The run's resolved options go to ``config.yaml`` at the start.

    The model copy (``models/fasterrcnn.pth``, what predict, validate and export use by
    default) is replaced only when there is none, when it came from this same run, when this
    run's best val mAP@0.5 is at least the copy's on the same val split (same split
    checksum), or with ``--promote``. ``state.promotion`` says what happened, in words.
    """

    def __init__(self) -> None:
        self.existing: dict | None = None  # the model copy's facts when the run started

    def on_fit_start(self, state) -> None:
        import yaml

        from gunctl.config import train_options
        from gunctl.core.fileio import write_bytes_atomic

        header = "# gunctl train --config this-file repeats the run (add --run-name NEW)\n"
        text = yaml.safe_dump(train_options(state.config), sort_keys=False)
        path = state.config.layout.run_config(state.run_name)
        write_bytes_atomic(path, (header + text).encode())
        self.existing = _model_copy_facts(state.config.layout.best_model)

    def on_epoch_end(self, state, record, result) -> None:
        from gunctl.core.checkpoint import checkpoint_payload, save_checkpoint, weights_payload

        save_checkpoint(state.last_path, checkpoint_payload(state))
        if state.best_epoch == state.epoch:
            save_checkpoint(state.best_path, weights_payload(state), kind="weights")
            promote, state.promotion = _promotion(state, self.existing)
            state.promoted = state.promoted or promote
            if promote:
                _place(state.best_path, state.config.layout.best_model)
        period = state.config.save_period
        if period and state.epoch % period == 0:
            _place(
                state.last_path, state.config.layout.epoch_checkpoint(state.run_name, state.epoch)
            )

    def on_exception(self, state, exc, resumable) -> None:
        if resumable:
            from gunctl.core.checkpoint import checkpoint_payload, save_checkpoint

            save_checkpoint(state.last_path, checkpoint_payload(state, interrupted=True))
            state.saved_on_exit = True


def _model_copy_facts(path: Path) -> dict | None:
    """Run, split checksum and best mAP@0.5 of the current model copy; None when there is
    none; ``{"unreadable": reason}`` when it cannot be read."""
    from gunctl.core.checkpoint import load_checkpoint
    from gunctl.errors import CheckpointError

    if not path.exists():
        return None
    try:
        data = load_checkpoint(path, mmap=True)
    except CheckpointError as exc:
        return {"unreadable": str(exc)}
    return {
        "run": data.get("run_name"),
        "split": data.get("split_checksum"),
        "map_50": data.get("best_metric"),
    }


def _promotion(state, existing: dict | None) -> tuple[bool, str]:
    """Whether this run's new best replaces the model copy, and why (for the summary)."""
    target = state.config.layout.best_model
    new = state.best_metric
    if state.config.promote:
        return True, f"replaced {target} (--promote)"
    if existing is None:
        return True, f"written to {target} (there was none)"
    if existing.get("run") == state.run_name and "unreadable" not in existing:
        return True, f"replaced {target} (from this same run)"
    if "unreadable" in existing:
        return False, f"kept {target}: unreadable ({existing['unreadable']}); --promote replaces it"
    old = existing.get("map_50")
    if existing.get("split") != state.split_checksum:
        return False, f"kept {target}: it was scored on another val split; --promote replaces it"
    if old is None or (new is not None and new >= old):
        shown = "-" if old is None else f"{old:.4f}"
        return True, f"replaced {target}: val mAP@0.5 {new:.4f} >= {shown} on the same split"
    return False, f"kept {target}: its val mAP@0.5 {old:.4f} is above this run's {new:.4f}"


class TensorBoardLogger(Callback):
    """Scalars per step and per epoch, val images with boxes, config and hparams."""

    def __init__(self) -> None:
        self.writer = None

    def on_fit_start(self, state) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # On resume, events past the checkpoint's step (from an interrupted epoch) are purged.
        purge = state.step if state.resumed_from else None
        self.writer = SummaryWriter(log_dir=str(state.run_dir), purge_step=purge)
        config = json.dumps(state.config_dict(), indent=2)
        self.writer.add_text("config", f"```\n{config}\n```", state.step)
        self.writer.add_text("weights", state.weights_origin, state.step)

    def on_step_end(self, state, step) -> None:
        for key, value in step.losses.items():
            self.writer.add_scalar(f"step/{key}", value, step.step)
        self.writer.add_scalar("step/lr", step.lr, step.step)
        if step.seconds > 0:
            self.writer.add_scalar("step/images_per_s", step.images / step.seconds, step.step)

    def on_epoch_end(self, state, record, result) -> None:
        epoch = record["epoch"]
        for part in ("train", "val"):
            for key in (*ALL_LOSS_KEYS, "loss"):
                if record[part].get(key) is not None:
                    self.writer.add_scalar(f"{part}/{key}", record[part][key], epoch)
        for key in ("map", "map_50", "map_75", "mar_100", "precision", "recall", "f1"):
            if record["val"].get(key) is not None:
                self.writer.add_scalar(f"val/{key}", record["val"][key], epoch)
        for name, values in (record["val"].get("per_class") or {}).items():
            for key in ("map", "map_50"):
                if values.get(key) is not None:
                    self.writer.add_scalar(f"val_per_class/{key}/{name}", values[key], epoch)
        self.writer.add_scalar("train/lr", record["lr"], epoch)
        self.writer.add_scalar("perf/images_per_s", record["train"]["images_per_s"], epoch)
        self.writer.add_scalar("perf/epoch_seconds", record["seconds"], epoch)
        self._images(state, result, epoch)
        self.writer.flush()

    def _images(self, state, result, epoch: int) -> None:
        import torch

        if result is None:  # an epoch without validation (--val-every)
            return
        threshold = state.config.score_threshold
        for index in range(min(state.config.log_images, len(result.predictions))):
            image, _ = state.val_dataset[index]
            pred, truth = result.predictions[index], result.targets[index]
            keep = pred["scores"] >= threshold
            boxes = [truth["boxes"], pred["boxes"][keep]]
            names = ["background", *state.class_names]
            labels = [f"true {names[int(k)]}" for k in truth["labels"]] + [
                f"{names[int(k)]} {s:.2f}"
                for k, s in zip(pred["labels"][keep], pred["scores"][keep], strict=True)
            ]
            self.writer.add_image_with_boxes(
                f"val/image_{index}", image, torch.cat(boxes), epoch, labels=labels
            )

    def on_fit_end(self, state) -> None:
        final = state.history[-1] if state.history else {"train": {}, "val": {}}
        metrics = {
            "hparam/best_map_50": state.best_metric if state.best_metric is not None else 0.0,
            "hparam/final_train_loss": final["train"].get("loss") or 0.0,
            "hparam/final_val_loss": final["val"].get("loss") or 0.0,
            "hparam/final_map": final["val"].get("map") or 0.0,
        }
        # run_name="." keeps the hparams in the run's own folder instead of a timestamped one.
        self.writer.add_hparams(state.hparams(), metrics, run_name=".", global_step=state.step)
        self.writer.close()

    def on_exception(self, state, exc, resumable) -> None:
        if self.writer is not None:
            self.writer.close()


def _place(source: Path, target: Path) -> None:
    """Atomically make ``target`` the same file as ``source`` (hard link, else a copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)
