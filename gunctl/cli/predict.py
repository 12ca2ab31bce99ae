"""gunctl predict: run a checkpoint on images, folders, globs, zips and videos."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli.console import console, escape, is_terminal, key_value_table, task_progress
from gunctl.cli.launch import Nproc, relaunch, under_torchrun
from gunctl.cli.options import (
    BatchSize,
    Device,
    Half,
    MaxDetections,
    Quiet,
    Runtime,
    ScoreThreshold,
    Weights,
    Workers,
    config_from,
    option,
)
from gunctl.config import LaunchConfig, Layout, PredictConfig
from gunctl.errors import EXIT_INTERRUPTED, DetectionError

_P = PredictConfig()


def predict(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Image files, folders (recursive), glob patterns (quoted), .zip archives and "
            "videos (.mp4 .avi .mov .mkv), mixed.",
            show_default=False,
        ),
    ] = None,
    weights: Weights = Layout().best_model,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for annotated files and predictions.jsonl; must not exist yet "
            "(default: artifacts/predictions/<timestamp>).",
        ),
    ] = None,
    score_threshold: ScoreThreshold = None,
    max_detections: MaxDetections = None,
    save_images: Annotated[
        bool,
        option(PredictConfig, "save_images", flags=("--save-images/--no-save-images",)),
    ] = _P.save_images,
    save_json: Annotated[
        bool,
        option(PredictConfig, "save_json", flags=("--save-json/--no-save-json",)),
    ] = _P.save_json,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the JSON lines on stdout and nothing else there."),
    ] = False,
    vid_stride: Annotated[int, option(PredictConfig, "vid_stride")] = _P.vid_stride,
    batch_size: BatchSize = _P.batch_size,
    workers: Workers = _P.workers,
    device: Device = _P.device,
    half: Half = _P.half,
    runtime: Runtime = _P.runtime,
    fail_on_detection: Annotated[
        bool, typer.Option("--fail-on-detection", help="Exit 1 when anything is detected.")
    ] = False,
    quiet: Quiet = False,
    nproc: Nproc = None,
) -> None:
    """Detect guns in images and videos; write annotated copies and predictions.jsonl.

    Unreadable files are reported one line each and skipped. Exit codes: 0 done, 1 something
    was detected with --fail-on-detection, 2 bad usage, or nothing could be read.

    Several GPUs or machines: torchrun --nproc_per_node=N -m gunctl predict ... (or --nproc N);
    the ranks share the inputs out and write into one --out that all of them see.
    """
    from gunctl.core.predict import predict as run_predict
    from gunctl.core.predict_dist import PeerFailed, predict_shared

    config = config_from(PredictConfig, locals(), sources=tuple(sources or ()), checkpoint=weights)
    LaunchConfig(nproc).check()
    if nproc is not None and not under_torchrun():
        config.check()  # a bad value fails here, not in each process
        raise typer.Exit(relaunch(nproc))
    if under_torchrun():  # each rank takes its share; rank 0 speaks for the job
        run_predict = predict_shared
    main = os.environ.get("RANK", "0") == "0"
    try:
        with task_progress("predicting", enabled=main and not (quiet or json_out)) as progress:
            result = run_predict(
                config, on_progress=progress, on_record=_print_line if json_out else None
            )
    except PeerFailed as exc:  # rank 0 has said why
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if main:
            raise
        raise typer.Exit(EXIT_INTERRUPTED) from None  # rank 0 says "interrupted"
    if not main:
        raise typer.Exit(1 if fail_on_detection and result.detections else 0)
    if not (quiet or json_out):
        show_predict_summary(result)
    if fail_on_detection and result.detections:
        raise DetectionError(
            f"{result.detections} detection(s) in {result.with_detection} image(s) or frame(s) "
            "(--fail-on-detection)"
        )


def _print_line(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def show_predict_summary(result) -> None:
    """A table on a terminal; ``what: value`` lines in logs and pipes."""
    rows = [
        ("files", str(result.files)),
        ("video frames", str(result.frames)),
        ("images or frames with a detection", str(result.with_detection)),
        ("detections", str(result.detections)),
        ("score threshold", f"{result.threshold:.3f}"),
        ("images/s", f"{result.images_per_s:.2f}"),
        ("runtime", result.runtime),
        *([("processes", str(result.world_size))] if result.world_size > 1 else []),
        ("problems", str(len(result.problems))),
        ("output", str(result.out or "-")),
    ]
    if is_terminal():
        console.print(key_value_table("Predictions", rows))
        return
    for name, value in rows:
        console.print(f"{name}: {escape(value)}", soft_wrap=True)
