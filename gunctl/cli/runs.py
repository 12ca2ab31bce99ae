"""gunctl runs: list the training runs (as `gunctl tb --list`) and remove the ones not needed."""

from __future__ import annotations

from typing import Annotated

import typer

from gunctl.cli.console import print_path
from gunctl.cli.options import Json, Out
from gunctl.config import Layout


def list_runs(
    out: Out = Layout().root,
    sort: Annotated[
        str, typer.Option("--sort", help="name, start, map50, loss or epochs.")
    ] = "start",
    json_out: Json = False,
) -> None:
    """List the runs in <out>/runs with their scores (the same as gunctl tb --list)."""
    from gunctl.cli.tb import print_runs
    from gunctl.core import runs

    runs_dir = Layout(out).runs
    print_runs(runs_dir, runs.list_runs(runs_dir, sort=sort), json_out)


def remove(
    names: Annotated[list[str], typer.Argument(help="Run names, as `gunctl runs list` shows.")],
    out: Out = Layout().root,
) -> None:
    """Delete runs (their folder under <out>/runs); a run that is training is refused."""
    from gunctl.core import runs

    runs_dir = Layout(out).runs
    for path in runs.remove_runs(runs_dir, names):  # all or none: each checked first
        print_path("removed", path)
