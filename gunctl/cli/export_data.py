"""gunctl export-data: write the ingested, checked data set out as YOLO or COCO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli.console import console, escape, print_json
from gunctl.cli.options import Json, Out, Quiet
from gunctl.config import Layout


def export_data(
    folder: Annotated[Path, typer.Argument(help="Folder to write (created; must be empty).")],
    format_name: Annotated[
        str, typer.Option("--format", help="yolo (images/, labels/, data.yaml) or coco.")
    ] = "coco",
    out: Out = Layout().root,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a folder that is not empty.")
    ] = False,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Write the ingested, checked data set (<out>/raw) as YOLO or COCO into FOLDER.

    Nothing is written outside FOLDER; a non-empty FOLDER is refused unless --force.
    """
    from gunctl.core.formats.writers import export_data as run_export

    result = run_export(Layout(out), folder, format_name, force)
    payload = {
        "folder": str(result.folder),
        "format": result.format,
        "images": result.images,
        "boxes": result.boxes,
        "class_names": result.class_names,
    }
    if json_out:
        print_json(payload)
    elif not quiet:
        console.print(
            f"Wrote {result.images} images and {result.boxes} boxes "
            f"({escape(', '.join(result.class_names))}) as {result.format} to "
            f"{escape(str(result.folder))}",
            soft_wrap=True,
        )
