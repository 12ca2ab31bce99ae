"""The gunctl command tree and its one error boundary.

Known errors (``GunctlError`` and I/O errors) become one line on stderr and an exit code;
anything else is a bug and keeps its traceback. ``--debug`` or ``GUNCTL_DEBUG=1`` shows
the traceback of known errors too. Exit codes: 0 success, 1 a check failed, 2 bad usage
or bad input, 3 training failed, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer
from typer.core import TyperGroup

from gunctl import __version__
from gunctl.cli import export, ingest, predict, split, tb, train, validate
from gunctl.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, GunctlError, first_line


class GuardedGroup(TyperGroup):
    """Turns known errors into one line and an exit code, for the CLI and CliRunner alike."""

    def list_commands(self, ctx):  # keep the order of registration, which follows the workflow
        return list(self.commands)

    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug")) or os.environ.get("GUNCTL_DEBUG") == "1"
        _route_core_logging()
        try:
            return super().invoke(ctx)
        except GunctlError as exc:
            if debug:
                raise
            _report(first_line(exc, limit=10_000))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if debug:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            _report(f"{where}{exc.strerror or exc}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            if debug:
                raise
            _report("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=GuardedGroup,
    name="gunctl",
    help="Train and validate a firearm detector, from raw data to a checkpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gunctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks (also GUNCTL_DEBUG=1).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Train and validate a firearm detector, from raw data to a checkpoint."""


# The sub-commands, in the order of the workflow.
app.command("ingest")(ingest.ingest)
app.command("split")(split.split)
app.command("train")(train.train)
app.command("validate")(validate.validate)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("tb")(tb.tb)


def main() -> None:
    app(prog_name="gunctl")


class _RenderHandler(logging.Handler):
    """The core logs warnings (logging.getLogger("gunctl")); people see them on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from gunctl.cli.render import note, warn

        (warn if record.levelno >= logging.WARNING else note)(record.getMessage())


def _route_core_logging() -> None:
    logger = logging.getLogger("gunctl")
    if not any(isinstance(h, _RenderHandler) for h in logger.handlers):
        logger.addHandler(_RenderHandler())
        logger.propagate = False
    # Under torchrun every rank runs this; rank 0 speaks for all of them, others only fail.
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.ERROR)


def _report(message: str) -> None:
    from rich.markup import escape

    from gunctl.cli.render import error

    error(escape(message))
