"""gunctl serve: the detector as an HTTP service (FastAPI on uvicorn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli.console import console, escape, is_terminal, note
from gunctl.cli.options import (
    Device,
    Half,
    MaxDetections,
    Runtime,
    ScoreThreshold,
    WeightsAlias,
    config_from,
    one_checkpoint,
    option,
)
from gunctl.config import Layout, ServeConfig

_S = ServeConfig()
API_KEY_ENV = "GUNCTL_API_KEY"


def serve(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="A gunctl checkpoint (.pth, full or slim) or an exported .onnx file "
            f"(default: {Layout().best_model}, as predict).",
            show_default=False,
        ),
    ] = None,
    weights: WeightsAlias = None,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to bind; any other than loopback needs an API key."),
    ] = _S.host,
    port: Annotated[int, option(ServeConfig, "port")] = _S.port,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help=f"Require this key (header X-API-Key) on /v1/* and /metrics; also {API_KEY_ENV}.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, option(ServeConfig, "workers")] = _S.workers,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size",
            help="Images of one size per forward pass (1: no micro-batching; default: 8 on "
            "CUDA, 1 on the CPU).",
            show_default=False,
        ),
    ] = _S.max_batch_size,
    batch_timeout_ms: Annotated[
        float,
        option(ServeConfig, "batch_timeout_ms"),
    ] = _S.batch_timeout_ms,
    max_queue: Annotated[
        int,
        option(ServeConfig, "max_queue"),
    ] = _S.max_queue,
    max_upload_mb: Annotated[float, option(ServeConfig, "max_upload_mb")] = _S.max_upload_mb,
    max_images: Annotated[int, option(ServeConfig, "max_images")] = _S.max_images,
    request_timeout: Annotated[
        float,
        option(ServeConfig, "request_timeout"),
    ] = _S.request_timeout,
    drain_seconds: Annotated[
        float,
        typer.Option(
            "--drain-seconds",
            help="After SIGTERM, answer 503 this long (load balancers notice) before stopping.",
        ),
    ] = _S.drain_seconds,
    score_threshold: ScoreThreshold = None,
    max_detections: MaxDetections = None,
    device: Device = _S.device,
    half: Half = _S.half,
    runtime: Runtime = _S.runtime,
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Log lines as JSON objects (log collectors).")
    ] = _S.json_logs,
) -> None:
    """Serve the detector over HTTP: POST /v1/detect, /v1/detect/batch, a page at /.

    Binds 127.0.0.1 unless --host says otherwise (then --api-key or GUNCTL_API_KEY is
    required). Stops on Ctrl-C, or on SIGTERM after draining in-flight requests.
    """
    from gunctl.core.serve.server import serve as run_server

    config = config_from(
        ServeConfig,
        locals(),
        checkpoint=one_checkpoint(model, weights) or Layout().best_model,
        api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
    )
    run_server(config, on_start=_show_start)
    note("stopped")


def _show_start(info) -> None:
    """The start-up panel on a terminal; plain ``what: value`` lines otherwise."""
    config, identity = info.config, info.identity
    rows = [
        ("url", info.url),
        ("model", f"{identity['name']} ({identity['model']}, {identity['format']})"),
        ("sha256", identity["sha256"][:16]),
        ("classes", ", ".join(identity["class_names"])),
        ("device", info.device),
        ("threshold", f"{info.threshold:.4f} ({info.threshold_origin})"),
        ("workers", str(config.workers)),
        (
            "batching",
            f"up to {info.max_batch_size} images of one size, waiting "
            f"{config.batch_timeout_ms:g} ms"
            if info.max_batch_size > 1
            else "off (--max-batch-size 1; the default on the CPU)",
        ),
        ("queue", f"{config.max_queue} images, then 503"),
        (
            "limits",
            f"{config.max_upload_mb:g} MB a body, {config.max_images} images a batch, "
            f"{config.request_timeout:g} s a request",
        ),
        ("API key", "required (X-API-Key)" if config.api_key else "none (loopback only)"),
        ("routes", "POST /v1/detect /v1/detect/batch, GET /v1/model /healthz /readyz /metrics /"),
    ]
    if not is_terminal():
        for name, value in rows:
            console.print(f"{name}: {escape(value)}", soft_wrap=True)
        return
    from rich.panel import Panel
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, escape(value))
    console.print(Panel(table, title="gunctl serve", subtitle="Ctrl-C to stop", expand=False))
