"""gunctl export: the detector as a TorchScript or ONNX file, or a slim checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli import render
from gunctl.cli.options import ScoreThreshold, Weights
from gunctl.config import EXPORT_FORMATS, ExportConfig, Layout
from gunctl.errors import UsageError

_X = ExportConfig()


def export(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="A gunctl checkpoint (.pth) [default: artifacts/models/fasterrcnn.pth].",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[Path | None, Weights.__metadata__[0]] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"{', '.join(EXPORT_FORMATS)}.")] = _X.format,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The file to write [default: beside the checkpoint: <name>.torchscript.pt, "
            "<name>.onnx or <name>.slim.pth].",
        ),
    ] = None,
    score_threshold: ScoreThreshold = None,
) -> None:
    """Write the detector (resizing and normalisation included) as one file.

    TorchScript and ONNX take a 3xHxW RGB image tensor and return boxes, scores and labels
    as `gunctl predict` does; pth is a slim checkpoint without optimizer state.
    Exit codes: 0 written, 2 bad usage or unreadable checkpoint.
    """
    from gunctl.core.export import export as run_export

    path = _one_checkpoint(checkpoint, weights)
    config = ExportConfig(checkpoint=path, format=fmt, out=out, score_threshold=score_threshold)
    result = run_export(config)
    render.note(f"model: {path}")
    render.show_export(result)


def _one_checkpoint(positional: Path | None, weights: Path | None) -> Path:
    if positional is not None and weights is not None and positional != weights:
        raise UsageError("give the checkpoint once: as an argument or with --weights")
    return positional or weights or Layout().best_model
