"""gunctl sweep: search training options with Optuna (each trial an ordinary training run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli.console import console, escape, note, print_path, say
from gunctl.cli.options import Out, Quiet, config_from, option
from gunctl.config import Layout, SweepConfig

_DEFAULTS = SweepConfig()


def sweep(
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            show_default="none",
            help="YAML file: `params:` (options to search: {low, high, log, step} or "
            "{choices}), optional `fixed:` options and `enqueue:` trials (see the README).",
        ),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", help="Trials in the study in all (every process counts).")
    ] = _DEFAULTS.trials,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes", show_default="off: the space's epochs", help="Each trial's --minutes."
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            show_default="sqlite under <out>/sweeps",
            help="Optuna storage: an RDB URL (sqlite:///f.db, postgresql://...) or "
            "journal:FILE; processes with the same storage and --study share the trials.",
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option("--study", show_default="the space file's name", help="Study name."),
    ] = None,
    resume: Annotated[
        bool,
        option(SweepConfig, "resume"),
    ] = False,
    show: Annotated[
        bool,
        option(SweepConfig, "show"),
    ] = False,
    pruner: Annotated[
        str,
        option(SweepConfig, "pruner"),
    ] = _DEFAULTS.pruner,
    warmup_epochs: Annotated[int, option(SweepConfig, "warmup_epochs")] = _DEFAULTS.warmup_epochs,
    startup_trials: Annotated[
        int,
        option(SweepConfig, "startup_trials"),
    ] = _DEFAULTS.startup_trials,
    seed: Annotated[
        int | None,
        typer.Option("--seed", show_default="random", help="The sampler's seed."),
    ] = None,
    mlflow: Annotated[
        bool | None,
        option(
            SweepConfig,
            "mlflow",
            flags=("--mlflow/--no-mlflow",),
            show_default="on when MLFLOW_TRACKING_URI is set",
        ),
    ] = None,
    out: Out = Layout().root,
    quiet: Quiet = False,
) -> None:
    """Search training options with Optuna: trials pruned on val mAP@0.5, shared storage.

    Each trial is a `gunctl train` run, <out>/runs/<study>-<number>. Needs the sweep extra.
    """
    from gunctl.core import sweep as core
    from gunctl.core import tracking

    core.require_optuna()
    config = config_from(
        SweepConfig,
        locals(),
        layout=Layout(out),
        mlflow=False if show else tracking.resolve_flag(mlflow),
    )
    if show:
        _show(core.show(config), quiet)
        return

    def make_callbacks() -> list:
        from gunctl.cli.train_display import TrainDisplay

        return [] if quiet else [TrainDisplay()]

    def on_trial(trial, result) -> None:
        if not quiet:
            console.print(trials_table(result, f"Study {result.study}: trial {trial.number}"))

    result = core.run_sweep(config, make_callbacks, on_trial)
    if not quiet:
        console.print(trials_table(result, f"Study {result.study}"))
        if not result.ran:
            note(f"the study already has {len(result.trials)} trial(s) of --trials {trials}")
        say(f"gunctl sweep --show --study {result.study} writes the best trial's best.yaml")


def trials_table(result, title: str):
    """Rank, value, state and options of every trial, the best first."""
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for column in ("rank", "trial", "val mAP@0.5", "state", "run", "options"):
        table.add_column(column, justify="right" if column in ("rank", "trial") else "left")
    ranked = sorted(result.trials, key=lambda t: (t.value is None, -(t.value or 0.0), t.number))
    for rank, trial in enumerate(ranked, 1):
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        state = trial.state + (f" ({trial.note})" if trial.note else "")
        options = ", ".join(f"{k}={_value(v)}" for k, v in trial.params.items())
        table.add_row(
            str(rank),
            str(trial.number),
            value,
            escape(state),
            escape(trial.run_name or "-"),
            escape(options),
        )
    return table


def _show(shown, quiet: bool) -> None:
    result = shown.result
    if quiet:
        return
    console.print(trials_table(result, f"Study {result.study} ({result.storage})"))
    if result.best is None:
        note("no trial has completed yet: no best.yaml")
        return
    best = result.best
    say(
        f"best: trial {best.number}, val mAP@0.5 {best.value:.4f}, run "
        f"{escape(best.run_name or '-')}"
    )
    if shown.importances:
        from rich.table import Table

        table = Table(title="Parameter importances (Optuna)", title_justify="left")
        table.add_column("option")
        table.add_column("importance", justify="right")
        for name, value in shown.importances.items():
            table.add_row(escape(name), f"{value:.3f}")
        console.print(table)
    print_path("best options", shown.best_yaml)
    say(f"gunctl train --config {escape(str(shown.best_yaml))} --run-name NEW trains it again")


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
