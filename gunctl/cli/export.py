"""gunctl export: the detector as a TorchScript or ONNX file, or a slim checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli import render
from gunctl.cli.options import ScoreThreshold, WeightsAlias, one_checkpoint
from gunctl.config import EXPORT_FORMATS, ExportConfig, Layout

_X = ExportConfig()


def export(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="A gunctl checkpoint (.pth) (default: artifacts/models/fasterrcnn.pth).",
            show_default=False,
        ),
    ] = None,
    weights: WeightsAlias = None,
    fmt: Annotated[str, typer.Option("--format", help=f"{', '.join(EXPORT_FORMATS)}.")] = _X.format,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The file to write (default: beside the checkpoint: <name>.torchscript.pt, "
            "<name>.onnx or <name>.slim.pth).",
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

    path = one_checkpoint(checkpoint, weights) or Layout().best_model
    config = ExportConfig(checkpoint=path, format=fmt, out=out, score_threshold=score_threshold)
    result = run_export(config)
    render.note(f"model: {path}")
    render.show_export(result)
