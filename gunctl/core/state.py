"""The training state that the trainer advances and the callbacks read; what ``fit`` returns.

Callbacks import this module, never the trainer: the callback API is defined by the state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunctl.config import to_dict

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gunctl.config import TrainConfig
    from gunctl.core.dataset import GunDataset
    from gunctl.core.engine import LossMeter

SELECTION_METRIC = "map_50"  # best.pth is the epoch with the highest val mAP@0.5


@dataclass
class TrainState:
    """Everything the callbacks may read, and what a checkpoint stores."""

    config: TrainConfig
    run_name: str
    run_dir: Path
    model: nn.Module  # unwrapped (never the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    device: torch.device
    weights_origin: str
    split_checksum: str
    manifest_checksum: str
    train_images: int
    val_dataset: GunDataset
    batches_per_epoch: int
    world_size: int = 1
    class_names: list[str] = field(default_factory=lambda: ["gun"])  # label k + 1 is name k
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batches_done: int = 0  # batches completed in the epoch under way (after an interrupt)
    meter: LossMeter | None = None  # the running losses of the epoch under way
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    resumed_from: Path | None = None
    saved_on_exit: bool = False
    train_summary: dict = field(default_factory=dict)  # the last finished epoch's train losses
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # kept across resumes
    promotion: str = ""  # what became of models/fasterrcnn.pth, in words (CheckpointSaver)
    promoted: bool = False  # this run's best is models/fasterrcnn.pth
    stopped_early: str | None = None  # why training ended before --epochs (--patience)
    ema: Any = None  # core.ema.ModelEma when the run averages its weights
    budget: Any = None  # core.budget.Budget while a --minutes run is still fitting its epochs
    precision: str = "fp32"  # of the training steps, in words (the run's header shows it)
    mlflow_run_id: str | None = None  # core.tracking's run, kept across resumes

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved as the model: the EMA of the weights when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def last_path(self) -> Path:
        return self.config.layout.last_checkpoint(self.run_name)

    @property
    def best_path(self) -> Path:
        return self.config.layout.best_checkpoint(self.run_name)

    def config_dict(self) -> dict[str, Any]:
        data = to_dict(self.config)
        data.pop("layout", None)  # where the files are is not part of what was trained
        return data

    def hparams(self) -> dict[str, Any]:
        flat = {k: v for k, v in self.config_dict().items() if k != "model"}
        flat.update({f"model.{k}": v for k, v in self.config_dict()["model"].items()})
        flat["weights_origin"] = self.weights_origin
        return {
            k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()
        }


@dataclass(frozen=True)
class FitResult:
    is_main: bool  # rank 0 (or the only process): the one that reports
    run_name: str
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    model_copy: Path | None
    best_metric: float | None
    best_epoch: int | None
    epochs: int
    history: list[dict]
    seconds: float
    stopped_early: str | None
    weights_origin: str
    train_images: int
    val_images: int
    promotion: str = ""  # CheckpointSaver's words on models/fasterrcnn.pth
