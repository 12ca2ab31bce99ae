"""Everything gunctl shows a person: the Rich consoles, tables and progress displays.

Human output goes to stdout; warnings and errors go to stderr. Under ``--json`` only the
JSON object goes to stdout. NO_COLOR is honoured by Rich itself.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    err_console.print(_escape(message), soft_wrap=True, style="dim")


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def ingest_table(report) -> Table:
    table = Table(title=f"Ingested {report.source}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("images", report.images),
        ("label files", report.images),
        ("boxes", report.boxes),
        ("images without boxes", report.empty_images),
        ("images converted to RGB", report.converted),
        ("smallest image (w x h)", _size(report.smallest)),
        ("largest image (w x h)", _size(report.largest)),
        ("problems", len(report.problems)),
    ]
    if report.version is not None:
        rows.insert(0, ("version", report.version))
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def problems_table(report, limit: int = 50) -> Table | None:
    from gunctl.core.labels import PROBLEM_KINDS

    if not report.problems:
        return None
    table = Table(title="Problems by kind", title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("what gunctl did")
    for kind, count in sorted(report.problem_counts().items()):
        table.add_row(kind, str(count), PROBLEM_KINDS[kind])
    return table


def split_table(path, counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title="Split", caption=f"written to {path}", title_justify="left")
    table.add_column("part")
    table.add_column("images", justify="right")
    table.add_column("boxes", justify="right")
    for part, values in counts.items():
        table.add_row(part, str(values["images"]), str(values["boxes"]))
    total_images = sum(v["images"] for v in counts.values())
    total_boxes = sum(v["boxes"] for v in counts.values())
    table.add_row("all", str(total_images), str(total_boxes), style="bold")
    return table


def _size(size) -> str:
    return f"{size[0]} x {size[1]}" if size else "-"


@contextlib.contextmanager
def task_progress(
    description: str, enabled: bool = True
) -> Iterator[Callable[[int, int], None] | None]:
    """A transient progress bar on a terminal; yields its update(done, total) or None."""
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)
