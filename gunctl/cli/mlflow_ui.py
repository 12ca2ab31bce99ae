"""gunctl mlflow-ui: MLflow's own UI on the runs that `--mlflow` tracked, on 127.0.0.1."""

from __future__ import annotations

from typing import Annotated

import typer

from gunctl.cli.console import note
from gunctl.cli.options import Out
from gunctl.config import Layout


def mlflow_ui(
    out: Out = Layout().root,
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 5000,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind; other than 127.0.0.1 exposes the runs to the network."
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve MLflow's UI for MLFLOW_TRACKING_URI, else <out>/mlflow.db (Ctrl-C to stop).

    The same as: mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db --host 127.0.0.1
    """
    import subprocess

    from gunctl.core import tracking

    tracking.require_mlflow("gunctl mlflow-ui")
    command = tracking.ui_command(Layout(out), host, port)
    note("running: " + " ".join(command))
    try:
        code = subprocess.call(command)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
