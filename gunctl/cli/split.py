"""gunctl split: a seeded, saved train/val split."""

from __future__ import annotations

from typing import Annotated

import typer

from gunctl.cli import render
from gunctl.cli.options import Json, Out, Quiet, Seed, Subset
from gunctl.config import Layout, SplitConfig


def split(
    seed: Seed = SplitConfig.seed,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of images held out for validation.")
    ] = SplitConfig.val_fraction,
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

    config = SplitConfig(
        seed=seed,
        val_fraction=val_fraction,
        subset=subset,
        layout=Layout(out),
        keep_source_split=keep_source_split,
    )
    result = create_split(config)
    counts = part_counts(result.split)
    if result.capped:
        total = sum(c["images"] for c in counts.values())
        render.warn(f"--subset {subset} is more than the {total} images ingested; using all")
    if json_out:
        render.print_json({"path": str(result.path), "seed": seed, "subset": subset, **counts})
    elif not quiet:
        render.console.print(render.split_table(counts))
        render.print_path("Wrote", result.path)
