"""gunctl ingest: bring the data set into <out>/raw and check it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gunctl.cli.console import (
    console,
    escape,
    key_value_table,
    print_json,
    print_path,
    task_progress,
    warn,
)
from gunctl.cli.options import Json, Out, Quiet, Seed, config_from, option
from gunctl.config import IngestConfig, Layout
from gunctl.core.labels import PROBLEM_KINDS
from gunctl.errors import UsageError

_RULES = "\n\n".join(f"{kind}: {what}." for kind, what in PROBLEM_KINDS.items())


def ingest(
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="kaggle (download with kagglehub), demo (synthetic, offline), "
            "or a local folder or .zip (Kaggle, YOLO, COCO or Pascal VOC layout).",
        ),
    ] = "kaggle",
    format_name: Annotated[
        str,
        typer.Option(
            "--format", help="Layout of a local source: auto (detect), kaggle, yolo, coco, voc."
        ),
    ] = IngestConfig.format,
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Keep these classes, in this order (comma-separated)."),
    ] = None,
    merge_classes: Annotated[
        str | None,
        typer.Option(
            "--merge-classes",
            help="Map every (kept) class to this one name [default: when the source has one].",
        ),
    ] = None,
    version: Annotated[int | None, option(IngestConfig, "version")] = None,
    out: Out = Layout().root,
    force: Annotated[bool, option(IngestConfig, "force")] = False,
    strict: Annotated[bool, option(IngestConfig, "strict")] = False,
    seed: Seed = IngestConfig.seed,
    count: Annotated[int, option(IngestConfig, "count")] = IngestConfig.count,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Bring the data set into <out>/raw: Kaggle, a folder, a zip or demo data."""
    from gunctl.core.ingest import ingest as run_ingest

    config = config_from(
        IngestConfig,
        locals(),
        layout=Layout(out),
        format=format_name,
        classes=_class_list(classes),
        merge_classes=merge_classes.strip() if merge_classes else None,
    )
    with task_progress("checking files", enabled=not (quiet or json_out)) as progress:
        report = run_ingest(config, progress=progress)
    if json_out:
        print_json(report.as_dict())
        return
    for problem in report.problems:  # every one, with its file and line (on stderr)
        warn(str(problem))
    if not quiet:
        console.print(ingest_table(report))
        if report.problems:
            console.print(problems_table(report))
        print_path("Wrote", report.raw_dir)
        print_path("Manifest:", config.layout.manifest)


ingest.__doc__ += (
    "\n\nLayouts (detected, or --format): kaggle (Images/ + Labels/, count then x1 y1 x2 y2 "
    "in pixels), yolo (images/ + labels/, class cx cy w h normalised, names from data.yaml or "
    "classes.txt, train/ val/ valid/ kept as the source split), coco (instances*.json or "
    "_annotations.coco.json with its images; iscrowd boxes left out), voc (Annotations/*.xml "
    "+ JPEGImages/; difficult objects kept; entity declarations refused)."
    "\n\nAccepted as they are: CRLF line ends, a UTF-8 BOM, trailing spaces, blank lines, "
    "a count of 0 (a negative image), float coordinates (kept, not rounded), .JPG/.jpg/.jpeg/"
    ".png names; grayscale, CMYK, palette and alpha images are converted to RGB."
    "\n\nWhat happens to each kind of problem (--strict makes any of them fatal):\n\n" + _RULES
)


def _class_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError("--classes: give one or more class names, comma-separated")
    return names


def ingest_table(report) -> Table:
    """What the ingest brought in: counts, classes, image sizes, problems."""
    rows = [
        *([("version", report.version)] if report.version is not None else []),
        ("format", report.source_format),
        ("images", report.images),
        ("label files", report.images),
        ("boxes", report.boxes),
        ("classes", ", ".join(report.class_names)),
        *(
            [("boxes per class", ", ".join(f"{k} {v}" for k, v in report.boxes_per_class.items()))]
            if len(report.class_names) > 1
            else []
        ),
        ("images without boxes", report.empty_images),
        ("images converted to RGB", report.converted),
        *((f"image {key}s (px)", _span(span)) for key, span in report.size_ranges().items()),
        ("problems", len(report.problems)),
    ]
    extra = (
        ("boxes of classes left out (--classes)", sum(report.classes_left_out.values())),
        ("crowd boxes left out (COCO iscrowd)", report.crowd_left_out),
        ("difficult boxes kept (Pascal VOC)", report.difficult),
    )
    rows += [(name, value) for name, value in extra if value]
    return key_value_table(f"Ingested {escape(report.source)}", rows)


def _span(values) -> str:
    return f"{values[0]} to {values[1]}" if values else "-"


def problems_table(report) -> Table:
    """Problems by kind, with what gunctl did about each kind."""
    table = Table(title="Problems by kind", title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("what gunctl did")
    for kind, count in sorted(report.problem_counts().items()):
        table.add_row(kind, str(count), PROBLEM_KINDS[kind])
    return table
