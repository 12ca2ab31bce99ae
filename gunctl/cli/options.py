"""Options shared by several commands, defined once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Out = Annotated[
    Path,
    typer.Option("--out", help="Output root: raw/, splits/, runs/ and models/ live under it."),
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; same seed, same result.")]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables; errors only.")]
Subset = Annotated[
    int | None,
    typer.Option("--subset", min=2, help="Use a seeded sample of N images (quick runs)."),
]
Device = Annotated[
    str, typer.Option("--device", help="auto (cuda when available), cpu, cuda or cuda:N.")
]
Workers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")]
BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per step (per process).")
]
_WEIGHTS_HELP = "The gunctl checkpoint (.pth, full or slim) to use."
Weights = Annotated[Path, typer.Option("--weights", help=_WEIGHTS_HELP)]
# validate and export also take the checkpoint as an argument; --weights is its other name.
WeightsAlias = Annotated[
    Path | None, typer.Option("--weights", help=_WEIGHTS_HELP + " Same as the argument.")
]


def one_checkpoint(argument: Path | None, weights: Path | None) -> Path:
    """The checkpoint given as an argument or with --weights (not two different ones)."""
    from gunctl.config import Layout
    from gunctl.errors import UsageError

    if argument is not None and weights is not None and argument != weights:
        raise UsageError("give the checkpoint once: as an argument or with --weights")
    return argument or weights or Layout().best_model


ScoreThreshold = Annotated[
    float | None,
    typer.Option(
        "--score-threshold",
        min=0.0,
        max=1.0,
        help="Keep detections scoring at least this (default: the checkpoint's best-F1 "
        "threshold on its val split, else 0.5).",
    ),
]
