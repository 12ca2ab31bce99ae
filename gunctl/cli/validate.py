"""gunctl validate: score a checkpoint, for people (a table) and for CI (JSON, exit codes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gunctl.cli.console import (
    console,
    escape,
    key_value_table,
    note,
    number,
    print_json,
    task_progress,
    warn,
)
from gunctl.cli.options import (
    BatchSize,
    ConfigFile,
    Device,
    Json,
    Out,
    Quiet,
    Runtime,
    WeightsAlias,
    Workers,
    config_from,
    one_checkpoint,
    option,
)
from gunctl.config import Layout, ValidateConfig
from gunctl.errors import ThresholdError

_DEFAULTS = ValidateConfig()


def validate(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="A gunctl checkpoint (.pth).", show_default="<out>/models/fasterrcnn.pth"
        ),
    ] = None,
    weights: WeightsAlias = None,
    part: Annotated[
        str | None,
        option(ValidateConfig, "part", show_default="the images the run validated on"),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            show_default="none",
            help="Score another data folder or .zip instead (any layout ingest reads; its "
            "classes are matched to the checkpoint's by name).",
        ),
    ] = None,
    out: Out = Layout().root,
    artifacts: Annotated[
        Path | None,
        typer.Option("--artifacts", hidden=True, help="Deprecated: the output root, now --out."),
    ] = None,
    score_threshold: Annotated[
        float,
        option(ValidateConfig, "score_threshold"),
    ] = _DEFAULTS.score_threshold,
    min_map50: Annotated[
        float | None,
        option(ValidateConfig, "min_map50", show_default="no bar"),
    ] = None,
    min_map: Annotated[
        float | None,
        option(ValidateConfig, "min_map", show_default="no bar"),
    ] = None,
    json_out: Json = False,
    report_file: Annotated[
        Path | None,
        typer.Option("--report", show_default="none", help="Also write the JSON report to FILE."),
    ] = None,
    save_predictions: Annotated[
        Path | None,
        typer.Option(
            "--save-predictions",
            show_default="none",
            help="Write images with boxes drawn and COCO-style JSON to this folder.",
        ),
    ] = None,
    tta: Annotated[
        bool,
        option(ValidateConfig, "tta"),
    ] = False,
    device: Device = _DEFAULTS.device,
    runtime: Runtime = _DEFAULTS.runtime,
    batch_size: BatchSize = _DEFAULTS.batch_size,
    workers: Workers = _DEFAULTS.workers,
    mlflow: Annotated[
        bool | None,
        option(
            ValidateConfig,
            "mlflow",
            flags=("--mlflow/--no-mlflow",),
            show_default="on when MLFLOW_TRACKING_URI is set",
        ),
    ] = None,
    config_file: ConfigFile = None,
    quiet: Quiet = False,
) -> None:
    """Score a checkpoint: mAP, precision/recall/F1 and losses; exit 1 below --min-map50.

    mAP@0.5, precision and recall come with a 95 % interval (bootstrap over the images): on a
    few dozen images it is wide. --runtime scores what predict runs (losses: torch only).

    Exit codes: 0 scored (and above the bars), 1 a score below --min-map50 or --min-map,
    2 bad usage or unreadable input (missing, corrupt, unsafe or foreign checkpoint).
    """
    from gunctl.core import tracking
    from gunctl.core.validate import validate_checkpoint

    checkpoint = one_checkpoint(checkpoint, weights)
    if artifacts is not None:
        warn("--artifacts is deprecated: the output root is --out, as in the other commands")
        out = artifacts
    config = config_from(
        ValidateConfig,
        locals(),
        checkpoint=checkpoint or Layout(out).best_model,
        layout=Layout(out),
        mlflow=tracking.resolve_flag(mlflow),
    )
    with task_progress("scoring", enabled=not (quiet or json_out)) as progress:
        counter = _Counter(progress)
        result = validate_checkpoint(config, on_batch=counter)
    note(f"model: {config.checkpoint}")
    failures = _failures(result.metrics, config.min_map50, config.min_map)
    report = _report(result, config, config.min_map50, config.min_map, failures)
    if report_file is not None:
        import json

        from gunctl.core.fileio import write_bytes_atomic

        write_bytes_atomic(report_file, (json.dumps(report, indent=2) + "\n").encode())
    if config.mlflow:
        _log_to_mlflow(config, report)
    if json_out:
        print_json(report)
    elif not quiet:
        console.print(validation_table(result, score_threshold))
        per_class = class_table(result.metrics.get("per_class"))
        if per_class is not None:
            console.print(per_class)
        if result.tta is not None:
            console.print(tta_table(result))
    if failures:
        raise ThresholdError("; ".join(failures))


def _log_to_mlflow(config: ValidateConfig, report: dict) -> None:
    """The figures to MLflow; a tracking failure is a warning (the scores stand)."""
    from gunctl.core.tracking import log_validation

    try:
        run_id = log_validation(config.layout, config.checkpoint, report)
    except Exception as exc:
        from gunctl.errors import first_line

        warn(f"MLflow: logging the figures failed ({first_line(exc)})")
        return
    note(f"MLflow run: {run_id}")


class _Counter:
    def __init__(self, progress):
        self.progress, self.done = progress, 0

    def __call__(self, images: int, total: int) -> None:
        self.done += images
        if self.progress:
            self.progress(self.done, total)


def _failures(metrics, min_map50, min_map) -> list[str]:
    failures = []
    for key, bar, flag in (("map_50", min_map50, "--min-map50"), ("map", min_map, "--min-map")):
        value = metrics.get(key)
        if bar is not None and (value is None or value < bar):
            shown = "undefined" if value is None else f"{value:.4f}"
            failures.append(
                f"{'mAP@0.5' if key == 'map_50' else 'mAP@0.5:0.95'} {shown} is below {flag} {bar}"
            )
    return failures


def _report(result, config, min_map50, min_map, failures) -> dict:
    return {
        "checkpoint": str(result.checkpoint),
        **result.facts,
        "data": result.data,
        "runtime": result.runtime,
        "losses": None if result.runtime == "torch" else f"n/a ({_NO_LOSSES})",
        "images": result.metrics.get("images"),
        "boxes": result.metrics.get("boxes"),
        "confidence": CONFIDENCE_METHOD,
        "score_threshold": config.score_threshold,
        "iou_threshold": config.iou_threshold,
        "metrics": result.metrics,
        "tta": result.tta,
        "min_map50": min_map50,
        "min_map": min_map,
        "passed": not failures,
    }


_NO_LOSSES = "the runtime gives detections only; --runtime torch adds them"
CONFIDENCE_METHOD = (
    "95 % percentile interval, bootstrap over images (1000 seeded resamples of the images "
    "with replacement): how far the figure moves with the images it rests on"
)


def with_interval(metrics: dict, key: str, digits: int = 4, images: bool = True) -> str:
    """``0.7130 (95 % CI 0.58-0.83, 30 images, bootstrap)``: a figure with its interval and
    the number of images it rests on (``-`` when absent; the figure alone without interval)."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)):
        return "-"
    interval = metrics.get(f"{key}_ci")
    count = metrics.get("images")
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2):
        return f"{value:.{digits}f}"
    low, high = (float(v) for v in interval)
    noun = "image" if count == 1 else "images"
    rests = f", {count} {noun}, bootstrap" if images and isinstance(count, int) else ""
    return f"{value:.{digits}f} (95 % CI {low:.2f}-{high:.2f}{rests})"


def validation_table(result, score_threshold: float) -> Table:
    """The checkpoint's facts and its scores: mAP (with its interval), precision/recall/F1,
    losses (torch runtime), speed."""
    from gunctl.config import FAMILY_LOSSES, model_family

    m, facts = result.metrics, result.facts
    runtime = getattr(result, "runtime", "torch")
    losses = FAMILY_LOSSES.get(model_family(str(facts["model"])), FAMILY_LOSSES["fasterrcnn"])
    loss_rows = (
        [
            *((f"val {key}", number(m.get(key), 4)) for key in losses),
            ("val loss (total)", number(m.get("loss"), 4)),
        ]
        if runtime == "torch"
        else [("val losses", f"n/a ({_NO_LOSSES})")]
    )
    at = f"@ score {score_threshold}, IoU 0.5"
    rows = [
        ("model", facts["model"]),
        ("epoch", str(facts["epoch"]) + (" (interrupted)" if facts.get("interrupted") else "")),
        ("run", facts.get("run") or "-"),
        ("weights origin", facts.get("weights_origin") or "-"),
        ("classes", ", ".join(facts.get("class_names") or ["gun"])),
        ("data", result.data),
        ("runtime", runtime),
        ("mAP@0.5:0.95", number(m.get("map"), 4)),
        ("mAP@0.5", with_interval(m, "map_50")),
        ("mAP@0.75", number(m.get("map_75"), 4)),
        ("mAR@100", number(m.get("mar_100"), 4)),
        (f"precision {at}", with_interval(m, "precision", images=False)),
        (f"recall {at}", with_interval(m, "recall", images=False)),
        (f"F1 {at}", number(m.get("f1"), 4)),
        *loss_rows,
        ("images", str(m.get("images"))),
        ("boxes", str(m.get("boxes"))),
        ("images/s (detection)", f"{m.get('images_per_s', 0):.2f}"),
        ("time (s), of which mAP", f"{m.get('seconds', 0):.2f}, {m.get('map_seconds', 0):.2f}"),
    ]
    return key_value_table(f"Validation of {escape(result.checkpoint)}", rows)


def tta_table(result) -> Table:
    """Plain against flip-TTA detection scores (validation_table holds the rest)."""
    table = Table(title="With flip TTA (box fusion)", title_justify="left")
    for name in ("", "plain", "flip TTA"):
        table.add_column(name, justify="right" if name else "left")
    for key, label in (("map", "mAP@0.5:0.95"), ("map_50", "mAP@0.5"), ("map_75", "mAP@0.75")):
        table.add_row(label, number(result.metrics.get(key), 4), number(result.tta.get(key), 4))
    for key in ("precision", "recall", "f1"):
        table.add_row(key, number(result.metrics.get(key), 4), number(result.tta.get(key), 4))
    return table


def class_table(per_class: dict | None, title: str = "Per class") -> Table | None:
    """mAP@0.5 and mAP@0.5:0.95 per class (None when there are no per-class figures, or one
    class only: its figures are the overall ones, already shown). Train shows it too."""
    if not per_class or len(per_class) < 2:
        return None
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    table.add_column("mAP@0.5", justify="right")
    table.add_column("mAP@0.5:0.95", justify="right")
    for name, values in per_class.items():
        table.add_row(
            escape(name),
            str(values.get("boxes", "-")),
            number(values.get("map_50"), 4),
            number(values.get("map"), 4),
        )
    return table
