"""Options shared by several commands, defined once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Out = Annotated[
    Path,
    typer.Option("--out", help="Output root: raw/, splits/, runs/ and models/ live under it."),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed", min=0, max=2**32 - 1, help="Random seed (0 to 2**32-1); same seed, same result."
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables; errors only.")]
Subset = Annotated[
    int | None,
    typer.Option(
        "--subset",
        min=2,
        show_default="all images",
        help="Use a seeded sample of N images (quick runs).",
    ),
]
Device = Annotated[
    str, typer.Option("--device", help="auto (cuda when available), cpu, cuda or cuda:N.")
]
Workers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")]
BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per step (per process).")
]
_WEIGHTS_HELP = "The gunctl checkpoint (.pth: last, best or slim) to use."
Weights = Annotated[Path, typer.Option("--weights", help=_WEIGHTS_HELP)]
# validate and export also take the checkpoint as an argument; --weights is its other name.
WeightsAlias = Annotated[
    Path | None, typer.Option("--weights", help=_WEIGHTS_HELP + " Same as the argument.")
]


def one_checkpoint(argument: Path | None, weights: Path | None) -> Path | None:
    """The checkpoint given as an argument or with --weights (not two different ones)."""
    from gunctl.errors import UsageError

    if argument is not None and weights is not None and argument != weights:
        raise UsageError("give the checkpoint once: as an argument or with --weights")
    return argument or weights


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


def _read_config_file(ctx: typer.Context, param, value: Path | None) -> Path | None:
    """``--config FILE.yaml``: the file's values become the command's defaults, so that any
    option given on the command line wins (click's default_map)."""
    if value is None or ctx.resilient_parsing:
        return value
    from gunctl.cli.configfile import read_options

    names = _config_names(ctx.command.params)
    options = read_options(value, list(names))
    ctx.default_map = {**(ctx.default_map or {}), **{names[k]: v for k, v in options.items()}}
    return value


def _config_names(params) -> dict[str, str]:
    """{name in a config file: parameter}: an option's long name as typed (``split`` for
    ``--split``, ``batch_size`` or ``batch-size``), an argument's own name."""
    names = {}
    for param in params:
        if getattr(param, "hidden", False) or param.name in ("config_file", "help", "debug"):
            continue
        longs = [opt for opt in param.opts if opt.startswith("--")]
        key = longs[0][2:] if longs else param.name
        names[key.replace("-", "_")] = param.name
    return names


ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        is_eager=True,
        callback=_read_config_file,
        show_default="none",
        help="A YAML file of options (names as on the command line, e.g. batch_size: 4); "
        "options given on the command line win. A run's <run>/config.yaml repeats it.",
    ),
]
