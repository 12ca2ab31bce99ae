"""gunctl train: train a detector on the split, with progress, TensorBoard and checkpoints."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from gunctl.cli.console import console, warn
from gunctl.cli.launch import Nproc, relaunch, under_torchrun
from gunctl.cli.options import (
    ConfigFile,
    Device,
    Out,
    Quiet,
    Seed,
    Subset,
    Workers,
    config_from,
    option,
)
from gunctl.config import (
    RESUMABLE_OPTIONS,
    LaunchConfig,
    Layout,
    ModelConfig,
    TrainConfig,
)
from gunctl.errors import UsageError
from gunctl.rules import options

_MODEL_DEFAULTS, _TRAIN_DEFAULTS = ModelConfig(), TrainConfig()

# Options that --resume takes from the command line (the others are ignored, with a warning):
# the config's RESUMABLE_OPTIONS, plus those that are not part of what was trained.
_RESUME_OPTIONS = (*RESUMABLE_OPTIONS, "out", "quiet", "nproc", "config_file", "debug")
# The model's options on the command line -> their field, from the declarations (the recipe
# keeps what the user set): a flag without its dashes, --multiscale -> model.train_sizes.
_FIELDS = {
    option.flag[2:].replace("-", "_"): f"model.{name}"
    for name, option in options(ModelConfig).items()
    if option.flag.startswith("--")
}
_BY_RECIPE = "the recipe's"


def train(
    ctx: typer.Context,
    epochs: Annotated[int, option(TrainConfig, "epochs")] = _TRAIN_DEFAULTS.epochs,
    minutes: Annotated[
        float | None,
        option(TrainConfig, "minutes", show_default="off: --epochs"),
    ] = None,
    recipe: Annotated[
        str,
        option(TrainConfig, "recipe"),
    ] = _TRAIN_DEFAULTS.recipe,
    subset: Subset = None,
    batch_size: Annotated[
        int | None,
        option(TrainConfig, "batch_size", show_default="8 on CUDA, 2 on the CPU"),
    ] = None,
    lr: Annotated[
        float,
        option(TrainConfig, "lr", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.lr,
    optimizer: Annotated[
        str,
        option(TrainConfig, "optimizer", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.optimizer,
    weight_decay: Annotated[
        float,
        option(TrainConfig, "weight_decay", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.weight_decay,
    lr_schedule: Annotated[
        str,
        option(TrainConfig, "lr_schedule", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.lr_schedule,
    warmup_steps: Annotated[
        int,
        option(TrainConfig, "warmup_steps", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.warmup_steps,
    model: Annotated[
        str,
        option(ModelConfig, "name", show_default=_BY_RECIPE),
    ] = _MODEL_DEFAULTS.name,
    weights: Annotated[str, option(ModelConfig, "weights")] = _MODEL_DEFAULTS.weights,
    min_size: Annotated[
        int,
        option(ModelConfig, "min_size", show_default=_BY_RECIPE),
    ] = _MODEL_DEFAULTS.min_size,
    max_size: Annotated[
        int,
        option(ModelConfig, "max_size", show_default=_BY_RECIPE),
    ] = _MODEL_DEFAULTS.max_size,
    device: Device = _TRAIN_DEFAULTS.device,
    amp: Annotated[
        bool,
        option(TrainConfig, "amp", flags=("--amp/--no-amp")),
    ] = _TRAIN_DEFAULTS.amp,
    channels_last: Annotated[
        bool,
        option(TrainConfig, "channels_last", flags=("--channels-last/--no-channels-last")),
    ] = _TRAIN_DEFAULTS.channels_last,
    workers: Workers = _TRAIN_DEFAULTS.workers,
    cache: Annotated[
        str,
        option(TrainConfig, "cache"),
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
        bool, option(TrainConfig, "hflip", flags=("--hflip/--no-hflip"))
    ] = _TRAIN_DEFAULTS.hflip,
    photometric: Annotated[
        float,
        option(TrainConfig, "photometric", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.photometric,
    zoom_out: Annotated[
        float,
        option(TrainConfig, "zoom_out", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.zoom_out,
    crop: Annotated[
        float,
        option(TrainConfig, "crop", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.crop,
    mosaic: Annotated[
        float,
        option(TrainConfig, "mosaic", show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.mosaic,
    multiscale: Annotated[
        str,
        option(ModelConfig, "train_sizes", show_default=_BY_RECIPE),
    ] = "off",
    norm: Annotated[
        str,
        option(ModelConfig, "norm", show_default=_BY_RECIPE),
    ] = _MODEL_DEFAULTS.norm,
    fpn_levels: Annotated[
        str,
        option(ModelConfig, "fpn_levels", show_default=_BY_RECIPE),
    ] = "all",
    fpn_channels: Annotated[
        int,
        option(ModelConfig, "fpn_channels", show_default=_BY_RECIPE),
    ] = _MODEL_DEFAULTS.fpn_channels,
    box_head_dim: Annotated[
        int,
        option(ModelConfig, "box_head_dim", show_default=_BY_RECIPE),
    ] = _MODEL_DEFAULTS.box_head_dim,
    fit_anchors: Annotated[
        bool,
        option(
            TrainConfig,
            "fit_anchors",
            flags=("--fit-anchors/--no-fit-anchors"),
            show_default=_BY_RECIPE,
        ),
    ] = _TRAIN_DEFAULTS.fit_anchors,
    ema: Annotated[
        bool,
        option(TrainConfig, "ema", flags=("--ema/--no-ema"), show_default=_BY_RECIPE),
    ] = _TRAIN_DEFAULTS.ema,
    ema_decay: Annotated[
        float | None,
        option(TrainConfig, "ema_decay", show_default="a window of a tenth of the run's steps"),
    ] = None,
    val_every: Annotated[
        int,
        option(TrainConfig, "val_every", show_default="1; fitted with --minutes"),
    ] = _TRAIN_DEFAULTS.val_every,
    promote: Annotated[
        bool,
        option(TrainConfig, "promote"),
    ] = _TRAIN_DEFAULTS.promote,
    patience: Annotated[
        int | None,
        option(TrainConfig, "patience", show_default="off"),
    ] = None,
    save_period: Annotated[
        int | None,
        option(TrainConfig, "save_period", show_default="off"),
    ] = None,
    mlflow: Annotated[
        bool | None,
        option(
            TrainConfig,
            "mlflow",
            flags=("--mlflow/--no-mlflow"),
            show_default="on when MLFLOW_TRACKING_URI is set",
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
    nproc: Nproc = None,
) -> None:
    """Train a detector on the split; writes checkpoints and a TensorBoard run.

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
        model=ModelConfig(
            **{
                field.removeprefix("model."): values[param]
                for param, field in _FIELDS.items()
                if param in values
            }
            | {"train_sizes": _sizes(multiscale), "fpn_levels": _levels(fpn_levels)}
        ),
        layout=Layout(out),
        explicit=explicit,
        mlflow=tracking.resolve_flag(mlflow),
    )
    config.check(relations=False)  # a bad value fails here, not in each --nproc process
    LaunchConfig(nproc).check()
    if nproc is not None and not under_torchrun():
        raise typer.Exit(relaunch(nproc))
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
