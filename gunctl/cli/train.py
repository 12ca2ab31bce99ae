"""gunctl train: train a Faster R-CNN on the split, with progress, TensorBoard and checkpoints."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from gunctl.cli.console import console, note, warn
from gunctl.cli.options import ConfigFile, Device, Out, Quiet, Seed, Subset, Workers, config_from
from gunctl.config import (
    CACHE_MODES,
    LR_SCHEDULES,
    MODEL_NAMES,
    NORMS,
    OPTIMIZERS,
    RECIPES,
    RESUMABLE_OPTIONS,
    LaunchConfig,
    Layout,
    ModelConfig,
    TrainConfig,
)
from gunctl.errors import UsageError

_MODEL_DEFAULTS, _TRAIN_DEFAULTS = ModelConfig(), TrainConfig()

# Options that --resume takes from the command line (the others are ignored, with a warning):
# the config's RESUMABLE_OPTIONS, plus those that are not part of what was trained.
_RESUME_OPTIONS = (*RESUMABLE_OPTIONS, "out", "quiet", "nproc", "config_file", "debug")
# Command-line names whose TrainConfig field differs (the recipe keeps what the user set).
_FIELDS = {
    "model": "model.name",
    "weights": "model.weights",
    "min_size": "model.min_size",
    "max_size": "model.max_size",
    "norm": "model.norm",
    "multiscale": "model.train_sizes",
    "fpn_levels": "model.fpn_levels",
    "fpn_channels": "model.fpn_channels",
    "box_head_dim": "model.box_head_dim",
}
_RECIPE_NOTE = " Set by --recipe unless given (see the README)."
_BY_RECIPE = "the recipe's"


def train(
    ctx: typer.Context,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Epochs in all (with --resume: the new total).")
    ] = _TRAIN_DEFAULTS.epochs,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            show_default="off: --epochs",
            help="Train for a wall-time budget instead of --epochs: epochs, schedule and EMA "
            "are fitted to it, validation included.",
        ),
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(
            "--recipe",
            help=f"{', '.join(RECIPES)}. scratch: from random weights; finetune: pretrained; "
            "plain: flip only, Adam 1e-4 (gunctl before recipes); auto: finetune with "
            "pretrained weights, else scratch. Options given explicitly override the recipe's.",
        ),
    ] = _TRAIN_DEFAULTS.recipe,
    subset: Subset = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            show_default="8 on CUDA, 2 on the CPU",
            help="Images per step, per process (the global batch is this x processes).",
        ),
    ] = None,
    lr: Annotated[
        float,
        typer.Option("--lr", help="Peak learning rate." + _RECIPE_NOTE, show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.lr,
    optimizer: Annotated[
        str,
        typer.Option(
            "--optimizer", help=f"{', '.join(OPTIMIZERS)}." + _RECIPE_NOTE, show_default=_BY_RECIPE
        ),
    ] = _TRAIN_DEFAULTS.optimizer,
    weight_decay: Annotated[
        float,
        typer.Option(
            "--weight-decay",
            help="L2 penalty on the weights." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.weight_decay,
    lr_schedule: Annotated[
        str,
        typer.Option(
            "--lr-schedule",
            help=f"{', '.join(LR_SCHEDULES)}; after a linear warm-up of up to --warmup-steps."
            + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.lr_schedule,
    warmup_steps: Annotated[
        int,
        typer.Option(
            "--warmup-steps",
            help="Warm-up length (capped at one epoch)." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.warmup_steps,
    model: Annotated[
        str,
        typer.Option(
            "--model", help=", ".join(MODEL_NAMES) + "." + _RECIPE_NOTE, show_default=_BY_RECIPE
        ),
    ] = _MODEL_DEFAULTS.name,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="auto (COCO when available, else from scratch), coco, imagenet, none, "
            "or a gunctl checkpoint to fine-tune.",
        ),
    ] = _MODEL_DEFAULTS.weights,
    min_size: Annotated[
        int,
        typer.Option(
            "--min-size",
            help="Shorter image side fed to the model (the data set's images are ~180 px)."
            + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _MODEL_DEFAULTS.min_size,
    max_size: Annotated[
        int,
        typer.Option(
            "--max-size",
            help="Cap on the longer side." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _MODEL_DEFAULTS.max_size,
    device: Device = _TRAIN_DEFAULTS.device,
    amp: Annotated[
        bool,
        typer.Option(
            "--amp/--no-amp",
            help="Mixed precision: bf16 (else fp16) autocast on CUDA; on a CPU with native "
            "bf16 (AVX-512 BF16 or AMX), bf16 for the backbone only. Evaluation on the CPU "
            "stays fp32.",
        ),
    ] = _TRAIN_DEFAULTS.amp,
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="Channels-last memory format on CUDA (faster with AMP); no effect on the CPU.",
        ),
    ] = _TRAIN_DEFAULTS.channels_last,
    workers: Workers = _TRAIN_DEFAULTS.workers,
    cache: Annotated[
        str,
        typer.Option(
            "--cache", help=f"{', '.join(CACHE_MODES)}: ram keeps decoded images in memory."
        ),
    ] = _TRAIN_DEFAULTS.cache,
    seed: Seed = _TRAIN_DEFAULTS.seed,
    run_name: Annotated[
        str | None,
        typer.Option(
            "--run-name",
            show_default="a timestamp",
            help="Folder under <out>/runs: one plain name.",
        ),
    ] = None,
    out: Out = Layout().root,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", show_default="none", help="A run name or checkpoint path to continue from."
        ),
    ] = None,
    hflip: Annotated[
        bool, typer.Option("--hflip/--no-hflip", help="Random horizontal flips (augmentation).")
    ] = _TRAIN_DEFAULTS.hflip,
    photometric: Annotated[
        float,
        typer.Option(
            "--photometric",
            help="Probability of brightness/contrast/saturation/hue distortion." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.photometric,
    zoom_out: Annotated[
        float,
        typer.Option(
            "--zoom-out",
            help="Probability of a zoom-out (image on a canvas up to 2x larger)." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.zoom_out,
    crop: Annotated[
        float,
        typer.Option(
            "--crop",
            help="Probability of an IoU-aware crop." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.crop,
    mosaic: Annotated[
        float,
        typer.Option(
            "--mosaic",
            help="Probability of a 2x2 mosaic of training images." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.mosaic,
    multiscale: Annotated[
        str,
        typer.Option(
            "--multiscale",
            help="Shorter sides drawn per batch in training, e.g. 192,224,288,320, or off "
            "(validation uses --min-size)." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = "off",
    norm: Annotated[
        str,
        typer.Option(
            "--norm",
            help=f"{', '.join(NORMS)}: normalisation of ResNet-FPN backbones (gn: GroupNorm, "
            "also in the FPN)." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _MODEL_DEFAULTS.norm,
    fpn_levels: Annotated[
        str,
        typer.Option(
            "--fpn-levels",
            help="ResNet stages feeding the FPN, e.g. 2,3,4 (no stride-4 level: faster), or all "
            "(ResNet-FPN models)." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = "all",
    fpn_channels: Annotated[
        int,
        typer.Option(
            "--fpn-channels",
            help="Width of the FPN, the RPN head and the pooled RoI features, a multiple of 32 "
            "(ResNet-FPN models)." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _MODEL_DEFAULTS.fpn_channels,
    box_head_dim: Annotated[
        int,
        typer.Option(
            "--box-head-dim",
            help="Width of the box head's two fully connected layers (all models but "
            "fasterrcnn_resnet50_fpn_v2)." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _MODEL_DEFAULTS.box_head_dim,
    fit_anchors: Annotated[
        bool,
        typer.Option(
            "--fit-anchors/--no-fit-anchors",
            help="Anchor sizes and ratios from the training boxes (ResNet-FPN models)."
            + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.fit_anchors,
    ema: Annotated[
        bool,
        typer.Option(
            "--ema/--no-ema",
            help="Evaluate and save an exponential moving average of the weights." + _RECIPE_NOTE,
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.ema,
    ema_decay: Annotated[
        float | None,
        typer.Option(
            "--ema-decay",
            show_default="a window of a tenth of the run's steps",
            help="EMA decay per step.",
        ),
    ] = None,
    val_every: Annotated[
        int,
        typer.Option(
            "--val-every",
            show_default="1; fitted with --minutes",
            help="Validate every k epochs, and after the last.",
        ),
    ] = _TRAIN_DEFAULTS.val_every,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="Make this run's best the default model (models/fasterrcnn.pth) even when the "
            "one there scored higher or on another split.",
        ),
    ] = _TRAIN_DEFAULTS.promote,
    patience: Annotated[
        int | None,
        typer.Option(
            "--patience",
            show_default="off",
            help="Stop when val mAP@0.5 has not improved for N epochs (best.pth is kept).",
        ),
    ] = None,
    save_period: Annotated[
        int | None,
        typer.Option(
            "--save-period",
            show_default="off",
            help="Also keep a full checkpoint epoch_<E>.pth every N epochs.",
        ),
    ] = None,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            "--mlflow/--no-mlflow",
            show_default="on when MLFLOW_TRACKING_URI is set",
            help="Track the run with MLflow (MLFLOW_TRACKING_URI, else <out>/mlflow.db): "
            "options, per-epoch metrics, artifacts and the model. Needs the mlflow extra.",
        ),
    ] = None,
    register: Annotated[
        str | None,
        typer.Option(
            "--register",
            show_default="not registered",
            help="With --mlflow: register the model in MLflow's registry under NAME.",
        ),
    ] = None,
    config_file: ConfigFile = None,
    quiet: Quiet = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            show_default="one process, no torchrun",
            help="Start this many processes on this machine with torchrun (one per GPU, or CPU "
            "processes with gloo); --batch-size is per process.",
        ),
    ] = None,
) -> None:
    """Train a Faster R-CNN on the split; writes checkpoints and a TensorBoard run.

    Several GPUs or machines: torchrun --nproc_per_node=N -m gunctl train ... (or --nproc N).
    """
    explicit = tuple(
        _FIELDS.get(name, name)
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "DEFAULT_MAP")
    )  # given on the command line or in --config: the recipe keeps them
    from gunctl.core import tracking

    values = locals()  # every parameter named as its config field goes across as it is
    config = config_from(
        TrainConfig,
        values,
        model=config_from(
            ModelConfig,
            {**values, "name": model},
            train_sizes=_sizes(multiscale),
            fpn_levels=_levels(fpn_levels),
        ),
        layout=Layout(out),
        explicit=explicit,
        mlflow=tracking.resolve_flag(mlflow),
    )
    config.check(relations=False)  # a bad value fails here, not in each --nproc process
    LaunchConfig(nproc).check()
    if nproc is not None and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_run_torchrun(nproc))
    if resume and os.environ.get("RANK", "0") == "0":
        _warn_ignored_on_resume(ctx)
    from gunctl.cli.train_display import TrainDisplay, fit_summary
    from gunctl.cli.validate import class_table
    from gunctl.core.trainer import fit

    callbacks = [] if quiet else [TrainDisplay()]
    if config.mlflow:
        from gunctl.core.tracking import MlflowTracker

        callbacks.insert(0, MlflowTracker(config.layout, register=config.register))
    result = fit(config, callbacks if os.environ.get("RANK", "0") == "0" else [])
    if not quiet and result.is_main:
        console.print(fit_summary(result))
        last = result.history[-1]["val"] if result.history else {}
        per_class = class_table(last.get("per_class"), "Per class (last epoch, val)")
        if per_class is not None:
            console.print(per_class)


def _sizes(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("off", "none", ""):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))  # their range: ModelConfig.check
    except ValueError:
        raise UsageError(f"--multiscale {text}: give sizes in px, like 192,224,288") from None


def _levels(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("all", ""):
        return ()
    try:
        return tuple(sorted({int(part) for part in text.split(",")}))  # range: ModelConfig.check
    except ValueError:
        raise UsageError(f"--fpn-levels {text}: give ResNet stages, like 2,3,4, or all") from None


def _run_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun (standalone, this machine), without --nproc."""
    import subprocess
    import sys

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "gunctl",
        *args,
    ]
    note("running: " + " ".join(command[1:]))
    return subprocess.call(command)


def _warn_ignored_on_resume(ctx: typer.Context) -> None:
    ignored = [
        name
        for name in ctx.params
        if name not in _RESUME_OPTIONS
        and getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    ]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        warn(f"{flags}: ignored with --resume (the checkpoint's settings are kept)")
