"""Options shared by several commands, defined once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gunctl.config import DetectorOptions
from gunctl.rules import declared


def option(cls, name: str, *names: str, flags: Any = None, **settings: Any) -> Any:
    """The command line's ``typer.Option`` of an option declared in config.py: its flag and
    help come from the declaration (``settings`` add Typer's display details only; ``flags``
    spells an on/off pair, ``"--ema/--no-ema"``)."""
    declaration = declared(cls, name)
    settings.setdefault("help", declaration.help)
    rule = declaration.rule
    if rule is not None and rule.kind != "flag":
        settings.setdefault("metavar", rule.metavar())  # what the value is: 0-1, N, DEVICE
    spelled = (flags,) if isinstance(flags, str) else tuple(flags or (declaration.flag,))
    return typer.Option(*spelled, *names, **settings)


def config_from(cls, values: dict[str, Any], **given: Any) -> Any:
    """A config from a command's parameters: each parameter named as a field of ``cls``
    (``locals()`` of the command), plus ``given`` for those named otherwise."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and k not in given}, **given)


Out = Annotated[
    Path,
    typer.Option("--out", help="Output root: raw/, splits/, runs/ and models/ live under it."),
]
Seed = Annotated[
    int,
    typer.Option("--seed", help="Random seed (0 to 2**32-1); same seed, same result."),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables; errors only.")]
Subset = Annotated[
    int | None,
    typer.Option(
        "--subset",
        show_default="all images",
        help="Use a seeded sample of N images (quick runs).",
    ),
]
Device = Annotated[str, option(DetectorOptions, "device")]
Workers = Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per step (per process).")]
Weights = Annotated[Path, option(DetectorOptions, "checkpoint")]
# validate, export and serve also take the model as an argument; --weights is its other name.
WeightsAlias = Annotated[
    Path | None,
    option(
        DetectorOptions,
        "checkpoint",
        help=declared(DetectorOptions, "checkpoint").help + " Same as the argument.",
    ),
]


def one_checkpoint(argument: Path | None, weights: Path | None) -> Path | None:
    """The checkpoint given as an argument or with --weights (not two different ones)."""
    from gunctl.errors import UsageError

    if argument is not None and weights is not None and argument != weights:
        raise UsageError("give the checkpoint once: as an argument or with --weights")
    return argument or weights


ScoreThreshold = Annotated[float | None, option(DetectorOptions, "score_threshold")]
MaxDetections = Annotated[int | None, option(DetectorOptions, "max_detections")]
Half = Annotated[bool, option(DetectorOptions, "half")]
Runtime = Annotated[str, option(DetectorOptions, "runtime")]


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
