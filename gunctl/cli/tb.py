"""gunctl tb: serve TensorBoard for the runs, or list and compare them without a server."""

from __future__ import annotations

from typing import Annotated

import typer

from gunctl.cli import render
from gunctl.cli.options import Json, Out
from gunctl.config import Layout


def tb(
    out: Out = Layout().root,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free port).")
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
        render.warn(
            f"{runs_dir} does not exist yet; TensorBoard shows runs once `gunctl train` writes them"
        )
    url = runs.start_tensorboard(runs_dir, host, port)
    render.say(f"TensorBoard for {runs_dir} at {url}  (Ctrl-C to stop)")
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
    render.note("stopped")


def print_runs(runs_dir, found, json_out: bool) -> None:
    if json_out:
        render.print_json({"runs_dir": str(runs_dir), "runs": [r.as_dict() for r in found]})
    else:
        render.console.print(render.runs_table(runs_dir, found))
        render.print_path("in", runs_dir)
