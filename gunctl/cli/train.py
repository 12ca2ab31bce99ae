"""gunctl train: train a Faster R-CNN on the split, with progress, TensorBoard and checkpoints."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from gunctl.cli import render
from gunctl.cli.options import ConfigFile, Device, Out, Quiet, Seed, Subset, Workers
from gunctl.config import (
    CACHE_MODES,
    LR_SCHEDULES,
    MODEL_NAMES,
    OPTIMIZERS,
    RESUMABLE_OPTIONS,
    Layout,
    ModelConfig,
    TrainConfig,
)

_MODEL_DEFAULTS, _TRAIN_DEFAULTS = ModelConfig(), TrainConfig()

# Options that --resume takes from the command line (the others are ignored, with a warning):
# the config's RESUMABLE_OPTIONS, plus those that are not part of what was trained.
_RESUME_OPTIONS = (*RESUMABLE_OPTIONS, "out", "quiet", "nproc", "config_file", "debug")


def train(
    ctx: typer.Context,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Epochs in all (with --resume: the new total).")
    ] = _TRAIN_DEFAULTS.epochs,
    subset: Subset = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            show_default="8 on CUDA, 2 on the CPU",
            help="Images per step, per process (the global batch is this x processes).",
        ),
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = _TRAIN_DEFAULTS.lr,
    optimizer: Annotated[
        str,
        typer.Option(
            "--optimizer", help=f"{', '.join(OPTIMIZERS)} (adam as in the original pipeline)."
        ),
    ] = _TRAIN_DEFAULTS.optimizer,
    weight_decay: Annotated[
        float,
        typer.Option(
            "--weight-decay", min=0.0, help="L2 penalty on the weights (try 1e-4 with adamw/sgd)."
        ),
    ] = _TRAIN_DEFAULTS.weight_decay,
    lr_schedule: Annotated[
        str,
        typer.Option(
            "--lr-schedule",
            help=f"{', '.join(LR_SCHEDULES)}; after a linear warm-up of up to --warmup-steps.",
        ),
    ] = _TRAIN_DEFAULTS.lr_schedule,
    warmup_steps: Annotated[
        int, typer.Option("--warmup-steps", min=0, help="Warm-up length (capped at one epoch).")
    ] = _TRAIN_DEFAULTS.warmup_steps,
    model: Annotated[
        str, typer.Option("--model", help=", ".join(MODEL_NAMES))
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
            min=32,
            help="Shorter image side fed to the model (the data set's images are ~180 px).",
        ),
    ] = _MODEL_DEFAULTS.min_size,
    max_size: Annotated[
        int, typer.Option("--max-size", min=32, help="Cap on the longer side.")
    ] = _MODEL_DEFAULTS.max_size,
    device: Device = _TRAIN_DEFAULTS.device,
    amp: Annotated[
        bool,
        typer.Option(
            "--amp/--no-amp",
            help="Mixed precision (bf16, else fp16) on CUDA; no effect on the CPU.",
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
            min=1,
            show_default="off",
            help="Stop when val mAP@0.5 has not improved for N epochs (best.pth is kept).",
        ),
    ] = None,
    save_period: Annotated[
        int | None,
        typer.Option(
            "--save-period",
            min=1,
            show_default="off",
            help="Also keep a full checkpoint epoch_<E>.pth every N epochs.",
        ),
    ] = None,
    config_file: ConfigFile = None,
    quiet: Quiet = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            min=1,
            show_default="one process, no torchrun",
            help="Start this many processes on this machine with torchrun (one per GPU, or CPU "
            "processes with gloo); --batch-size is per process.",
        ),
    ] = None,
) -> None:
    """Train a Faster R-CNN on the split; writes checkpoints and a TensorBoard run.

    Several GPUs or machines: torchrun --nproc_per_node=N -m gunctl train ... (or --nproc N).
    """
    if nproc is not None and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_run_torchrun(nproc))
    from gunctl.core.trainer import fit

    if resume:
        _warn_ignored_on_resume(ctx)
    config = TrainConfig(
        model=ModelConfig(name=model, weights=weights, min_size=min_size, max_size=max_size),
        layout=Layout(out),
        epochs=epochs,
        subset=subset,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        device=device,
        amp=amp,
        channels_last=channels_last,
        workers=workers,
        cache=cache,
        seed=seed,
        hflip=hflip,
        run_name=run_name,
        resume=resume,
        promote=promote,
        patience=patience,
        save_period=save_period,
    )
    callbacks = [] if quiet else [render.TrainDisplay()]
    result = fit(config, callbacks if os.environ.get("RANK", "0") == "0" else [])
    if not quiet and result.is_main:
        render.console.print(render.fit_summary(result))
        last = result.history[-1]["val"] if result.history else {}
        per_class = render.class_table(last.get("per_class"), "Per class (last epoch, val)")
        if per_class is not None:
            render.console.print(per_class)


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
    render.note("running: " + " ".join(command[1:]))
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
        render.warn(f"{flags}: ignored with --resume (the checkpoint's settings are kept)")
