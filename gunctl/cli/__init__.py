"""The gunctl command tree and its one error boundary.

Known errors (``GunctlError`` and I/O errors) become one line on stderr and an exit code;
anything else is a bug and keeps its traceback. ``--debug`` or ``GUNCTL_DEBUG=1`` shows
the traceback of known errors too. Exit codes: 0 success, 1 a check failed, 2 bad usage
or bad input, 3 training failed, 130 interrupted.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from gunctl import __version__
from gunctl.cli import (
    export,
    export_data,
    helptext,
    ingest,
    mlflow_ui,
    predict,
    runs,
    serve,
    split,
    sweep,
    tb,
    train,
    validate,
    watch,
)
from gunctl.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, GunctlError, first_line

_DEBUG_KEY = "gunctl.debug"  # in ctx.meta, which every sub-context shares with its parent


_HELP_KEY = "gunctl.help"  # set while --help is written: its parameters are display copies


class _ReadableHelp:
    """``--help`` at 100 columns: what a value is, once (``N``, ``PATH``, ``0-1``), and each
    option's names in one column (``--[no-]amp``, ``--quiet, -q``); see ``cli/helptext.py``."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        helptext.set_metavars(params)
        return helptext.for_help(params) if ctx.meta.get(_HELP_KEY) else params

    def format_help(self, ctx, formatter):
        ctx.meta[_HELP_KEY] = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            ctx.meta.pop(_HELP_KEY, None)


class GunctlCommand(_ReadableHelp, TyperCommand):
    """A sub-command: its help shows values and flags as they are typed."""


class GunctlGroup(_ReadableHelp, TyperGroup):
    """A group of commands: listed in the order of registration, its help as a command's."""

    def list_commands(self, ctx):  # the order of registration follows the workflow
        return list(self.commands)


class GuardedGroup(GunctlGroup):
    """Turns known errors into one line and an exit code, for the CLI and CliRunner alike."""

    def invoke(self, ctx):
        from gunctl.cli.console import refresh_width

        refresh_width()
        _route_core_logging()
        try:
            return super().invoke(ctx)
        except GunctlError as exc:
            if _debug(ctx):
                raise
            _report(_message(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if _debug(ctx):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            _report(f"{where}{exc.strerror or exc}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            _report("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=GuardedGroup,
    name="gunctl",
    help="Detect firearms in images, videos and camera streams with a detector you train."
    "\n\nIngest and split a data set; train and validate a detector (Faster R-CNN, RetinaNet, "
    "FCOS, SSDlite); predict on files and videos; export it; serve it over HTTP; watch streams "
    "and raise alerts. tb, sweep and mlflow-ui compare runs.",
    no_args_is_help=True,
    add_completion=True,  # gunctl --install-completion / --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _debug(ctx) -> bool:
    return bool(ctx.meta.get(_DEBUG_KEY)) or os.environ.get("GUNCTL_DEBUG") == "1"


def _set_debug(ctx: typer.Context, value: bool) -> bool:
    if value:
        ctx.meta[_DEBUG_KEY] = True
    return value


Debug = Annotated[
    bool,
    typer.Option(
        "--debug", callback=_set_debug, is_eager=True, help="Show tracebacks (also GUNCTL_DEBUG=1)."
    ),
]


def _with_debug(command):
    """Add the shared ``--debug`` option to a command, so that it works after the command name
    too (``gunctl train --debug``); the command function itself never sees it."""
    signature = inspect.signature(command, eval_str=True)
    debug = inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False)
    parameters = list(signature.parameters.values())
    parameters.append(debug.replace(annotation=Debug))

    @functools.wraps(command)
    def wrapper(*args, debug: bool = False, **kwargs):
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gunctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Debug = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """The options before the command: --debug and --version (the help is the app's)."""


# The sub-commands, in the order of the workflow.
for _name, _function in (
    ("ingest", ingest.ingest),
    ("split", split.split),
    ("train", train.train),
    ("validate", validate.validate),
    ("predict", predict.predict),
    ("export", export.export),
    ("serve", serve.serve),
    ("tb", tb.tb),
    ("sweep", sweep.sweep),
    ("mlflow-ui", mlflow_ui.mlflow_ui),
    ("export-data", export_data.export_data),
    ("watch", watch.watch),
):
    app.command(_name, cls=GunctlCommand)(_with_debug(_function))

runs_app = typer.Typer(
    cls=GunctlGroup,
    name="runs",
    help="List the training runs, or remove them.",
    no_args_is_help=True,
    add_completion=False,
)
runs_app.command("list", cls=GunctlCommand)(_with_debug(runs.list_runs))
runs_app.command("rm", cls=GunctlCommand)(_with_debug(runs.remove))
app.add_typer(runs_app)


def main() -> None:
    app(prog_name="gunctl")


class _RenderHandler(logging.Handler):
    """The core logs warnings (logging.getLogger("gunctl")); people see them on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from gunctl.cli.console import note, warn

        (warn if record.levelno >= logging.WARNING else note)(record.getMessage())


def _route_core_logging() -> None:
    logger = logging.getLogger("gunctl")
    if not any(isinstance(h, _RenderHandler) for h in logger.handlers):
        logger.addHandler(_RenderHandler())
        logger.propagate = False
    # Under torchrun every rank runs this; rank 0 speaks for all of them, others only fail.
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.ERROR)


def _report(message: str) -> None:
    from gunctl.cli.console import error

    error(message)  # escaped there: markup and control characters (names may hold both)


def _message(exc: GunctlError) -> str:
    """A GunctlError's message, whole: it is one line by construction, so a line break in it
    comes from a name and stays (shown as ``\\n``); DataLoader wrapping is removed."""
    text = str(exc).strip()
    return (
        first_line(exc, limit=10_000)
        if "Original Traceback" in text
        else text or type(exc).__name__
    )
