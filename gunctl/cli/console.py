"""The consoles, and the safety of everything gunctl prints: escaping, messages, progress.

Human output goes to stdout; warnings and errors go to stderr. Under ``--json`` only the
JSON object goes to stdout (``json.dumps`` escapes control characters). NO_COLOR is honoured
by Rich itself.

Everything a user, a file name, a label or a checkpoint controls goes through ``escape``
before it reaches the terminal: Rich markup is escaped (``[/]`` is text, not a closing tag),
emoji codes are off (``:fire:`` stays text), and control characters, escape sequences, line
breaks and bidirectional overrides are shown as Python writes them (``\\x1b``, ``\\n``,
``\\u202e``), so a name can neither drive the terminal nor split a message.

Commands print through this module: ``note``/``warn``/``error`` on stderr, ``say`` and
``print_path`` on stdout, ``print_json`` for ``--json``, ``task_progress`` for a transient bar,
``is_terminal()`` to choose between a table and plain lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console


def _width(stream) -> int | None:
    """Rich's own width on a terminal; COLUMNS or 120 in logs and pipes (Rich would use 80)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return None if stream.isatty() else 120


console = Console(highlight=False, emoji=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, emoji=False, width=_width(sys.stderr))
# Control (Cc), format (Cf: bidi overrides, zero-width), lone surrogates (Cs), private use,
# unassigned, and the Unicode line and paragraph separators.
_SHOWN_ESCAPED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def escape(value: object) -> str:
    """``value`` as inert text for a Rich console: markup escaped, control characters visible."""
    from rich.markup import escape as escape_markup

    text = str(value)
    if not text.isprintable():
        text = "".join(_visible(char) for char in text)
    return escape_markup(text)


def _visible(char: str) -> str:
    if unicodedata.category(char) in _SHOWN_ESCAPED:
        return char.encode("unicode_escape", "backslashreplace").decode("ascii")
    return char


def is_terminal() -> bool:
    """Whether stdout is a terminal (tables and live bars) or a log or pipe (plain lines)."""
    return console.is_terminal


def refresh_width() -> None:
    """Re-read COLUMNS (set after import, e.g. by a test runner or an embedding program)."""
    for target, stream in ((console, sys.stdout), (err_console, sys.stderr)):
        width = _width(stream)
        if width is not None:
            target.width = width


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, markup=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    err_console.print(escape(message), soft_wrap=True, style="dim")


def say(message: str) -> None:
    """A plain line on stdout; ``message`` is escaped (it may hold paths and names)."""
    console.print(escape(message), soft_wrap=True)


def print_path(label: str, path) -> None:
    """A path on one line whatever the width (the terminal wraps it, Rich does not break it)."""
    console.print(f"{label} {escape(path)}", soft_wrap=True)


def print_json(payload: dict[str, Any]) -> None:
    """The one JSON object of ``--json`` on stdout (nothing else goes there)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def number(value, digits: int = 3) -> str:
    """A figure for a table: ``-`` when absent."""
    return "-" if value is None else f"{value:.{digits}f}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def key_value_table(title: str, rows, justify: str = "right"):
    """A two-column ``what | value`` table; values are escaped here (they may hold names)."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify=justify)
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


@contextlib.contextmanager
def task_progress(
    description: str, enabled: bool = True
) -> Iterator[Callable[[int, int], None] | None]:
    """A transient progress bar on a terminal; yields its update(done, total) or None."""
    if not enabled or not console.is_terminal:
        yield None
        return
    with progress_bar(transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def progress_bar(*fields: str, transient: bool = False, eta: bool = True):
    """gunctl's progress bar: description, bar, done/total, the given text fields, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(field) for field in fields),
        *([TimeRemainingColumn()] if eta else []),
        console=console,
        transient=transient,
    )
