"""gunctl tb: serve TensorBoard for the runs, or list and compare them without a server."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gunctl.cli.console import console, escape, note, number, print_json, print_path, say, warn
from gunctl.cli.options import Json, Out
from gunctl.config import Layout, TensorBoardConfig


def tb(
    out: Out = Layout().root,
    port: Annotated[
        int, typer.Option("--port", help="Port to serve on (0: any free port).")
    ] = 6006,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind; other than 127.0.0.1 exposes the runs to the network."
        ),
    ] = "127.0.0.1",
    list_runs: Annotated[
        bool, typer.Option("--list", help="Print a table of the runs instead of serving.")
    ] = False,
    sort: Annotated[
        str, typer.Option("--sort", help="With --list: name, start, map50, loss or epochs.")
    ] = "start",
    json_out: Json = False,
) -> None:
    """Serve TensorBoard for <out>/runs on 127.0.0.1, or --list the runs with their scores."""
    from gunctl.core import runs

    runs_dir = Layout(out).runs
    if list_runs or json_out:
        found = runs.list_runs(runs_dir, sort=sort)
        print_runs(runs_dir, found, json_out)
        return
    if not runs_dir.is_dir():
        warn(
            f"{runs_dir} does not exist yet; TensorBoard shows runs once `gunctl train` writes them"
        )
    TensorBoardConfig(host, port).check()
    url = runs.start_tensorboard(runs_dir, host, port)
    say(f"TensorBoard for {runs_dir} at {url}  (Ctrl-C to stop)")
    _wait_for_interrupt()


def _wait_for_interrupt() -> None:
    """Serve until Ctrl-C or SIGTERM (handled explicitly: a shell may start us with SIGINT
    ignored, and TensorBoard's threads would then keep the process up)."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    note("stopped")


def print_runs(runs_dir, found, json_out: bool) -> None:
    if json_out:
        print_json({"runs_dir": str(runs_dir), "runs": [r.as_dict() for r in found]})
    else:
        console.print(runs_table(found))
        print_path("in", runs_dir)


_RUN_COLUMNS = ("started (UTC)", "model", "epochs", "train loss", "best mAP@.5", "checkpoint")
_DROP_FIRST = ("model", "train loss", "started (UTC)", "checkpoint", "epochs")  # when narrow


def runs_table(runs) -> Table:
    """One row per run. The run name is never cut (it is what --resume takes): on a narrow
    terminal the less important columns are left out instead (--json has them all). The
    checkpoint is named relative to the run folder (best.pth: the one to validate)."""
    rows = [_run_row(run) for run in runs]
    shown = ["run", *_RUN_COLUMNS]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in shown}
    dropped = []
    for column in _DROP_FIRST:
        if sum(widths[c] + 3 for c in shown) + 1 <= console.width:
            break
        shown.remove(column)
        dropped.append(column)
    table = Table(title="Runs", title_justify="left", caption_justify="left")
    for column in shown:
        right = column in ("epochs", "train loss", "best mAP@.5")
        table.add_column(column, justify="right" if right else "left", no_wrap=column == "run")
    for row in rows:
        table.add_row(*(row[c] for c in shown))
    if not runs:
        table.caption = "no runs yet: `gunctl train` writes them"
    elif dropped:
        table.caption = f"not shown at this width: {', '.join(dropped)} (see --json)"
    return table


def _run_row(run) -> dict[str, str]:
    return {
        "run": escape(run.name),
        "started (UTC)": run.start.strftime("%Y-%m-%d %H:%M") if run.start else "-",
        "model": escape((run.model or "-").removeprefix("fasterrcnn_")),
        "epochs": str(run.epochs) if run.epochs is not None else "-",
        "train loss": number(run.final_train_loss),
        "best mAP@.5": number(run.best_map50),
        "checkpoint": escape(run.checkpoint.name) if run.checkpoint else "-",
    }
