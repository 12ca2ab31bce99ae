"""gunctl split: a seeded, saved train/val split."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gunctl.cli.console import console, print_json, print_path, warn
from gunctl.cli.options import Json, Out, Quiet, Seed, Subset, config_from, option
from gunctl.config import Layout, SplitConfig


def split(
    seed: Seed = SplitConfig.seed,
    val_fraction: Annotated[float, option(SplitConfig, "val_fraction")] = SplitConfig.val_fraction,
    subset: Subset = None,
    keep_source_split: Annotated[
        bool,
        typer.Option(
            "--keep-source-split",
            help="Keep the source's own train/ and val/ (valid/) folders (YOLO, Roboflow).",
        ),
    ] = False,
    out: Out = Layout().root,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Make a seeded train/val split of the ingested images (<out>/splits/split.json)."""
    from gunctl.core.split import create_split, part_counts

    config = config_from(
        SplitConfig,
        locals(),
        layout=Layout(out),
    )
    result = create_split(config)
    counts = part_counts(result.split)
    if result.capped:
        total = sum(c["images"] for c in counts.values())
        warn(f"--subset {subset} is more than the {total} images ingested; using all")
    if json_out:
        print_json({"path": str(result.path), "seed": seed, "subset": subset, **counts})
    elif not quiet:
        console.print(split_table(counts))
        print_path("Wrote", result.path)


def split_table(counts: dict[str, dict[str, int]]) -> Table:
    """Images and boxes per part, and in all."""
    table = Table(title="Split", title_justify="left")
    table.add_column("part")
    table.add_column("images", justify="right")
    table.add_column("boxes", justify="right")
    for part, values in counts.items():
        table.add_row(part, str(values["images"]), str(values["boxes"]))
    total_images = sum(v["images"] for v in counts.values())
    total_boxes = sum(v["boxes"] for v in counts.values())
    table.add_row("all", str(total_images), str(total_boxes), style="bold")
    return table
