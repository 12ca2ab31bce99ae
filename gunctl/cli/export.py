"""gunctl export: the detector as a TorchScript or ONNX file, or a slim checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli.console import console, escape, note
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
    note(f"model: {path}")
    show_export(result)


def show_export(result) -> None:
    """What was written, its size against the checkpoint's, and the parity check's figures."""
    ratio = result.bytes / result.checkpoint_bytes if result.checkpoint_bytes else 0.0
    console.print(
        f"wrote {escape(str(result.path))} ({result.format}, {result.bytes / 2**20:.1f} MiB, "
        f"{ratio:.0%} of the checkpoint; classes {escape(', '.join(result.class_names[1:]))}; "
        f"score threshold {result.threshold:.3f})",
        soft_wrap=True,
    )
    if result.max_box_diff is not None:
        console.print(
            f"checked in onnxruntime: boxes within {result.max_box_diff:.4f} px, scores within "
            f"{result.max_score_diff:.1e} of PyTorch",
            soft_wrap=True,
        )
