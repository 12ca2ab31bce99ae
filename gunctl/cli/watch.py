"""gunctl watch: live streams, files and devices in; tracked detections and alerts out."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from gunctl.cli.console import console, err_console, escape, is_terminal, key_value_table
from gunctl.cli.options import (
    Device,
    Quiet,
    Runtime,
    ScoreThreshold,
    Weights,
    config_from,
    option,
)
from gunctl.config import Layout, WatchConfig
from gunctl.errors import EXIT_INTERRUPTED

_W = WatchConfig()
PLAIN_STATUS_S = 30.0  # in logs and pipes: a status line per source this often


def watch(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="rtsp://, rtmp://, http(s):// URLs, video files and capture devices "
            "(/dev/video0), several at once.",
            show_default=False,
        ),
    ] = None,
    weights: Weights = Layout().best_model,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="A name per source, in order (default: from the URL/file)."),
    ] = None,
    out: Annotated[
        Path,
        typer.Option("--out", help="events.jsonl (appended) and snapshots/<run>/ go here."),
    ] = _W.out,
    detect_fps: Annotated[float, option(WatchConfig, "detect_fps")] = _W.detect_fps,
    min_hits: Annotated[int, option(WatchConfig, "min_hits")] = _W.min_hits,
    min_hit_ratio: Annotated[
        float,
        option(WatchConfig, "min_hit_ratio"),
    ] = _W.min_hit_ratio,
    alert_threshold: Annotated[
        float,
        option(WatchConfig, "alert_threshold"),
    ] = _W.alert_threshold,
    cooldown: Annotated[float, option(WatchConfig, "cooldown")] = _W.cooldown,
    track_timeout: Annotated[
        float,
        option(WatchConfig, "track_timeout"),
    ] = _W.track_timeout,
    zone: Annotated[
        list[str] | None,
        typer.Option(
            "--zone",
            help="NAME[@SOURCE]:x1,y1,x2,y2,x3,y3,... a polygon (pixels, or fractions of the "
            "frame when all values <= 1); alerts only when a box's bottom centre is inside.",
        ),
    ] = None,
    score_threshold: ScoreThreshold = None,
    runtime: Runtime = "auto",
    realtime: Annotated[
        bool,
        option(WatchConfig, "realtime"),
    ] = _W.realtime,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="POST each event as JSON to this URL.")
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            "--webhook-secret",
            envvar="GUNCTL_WEBHOOK_SECRET",
            help="Sign bodies: X-Gunctl-Signature: sha256=HMAC (also GUNCTL_WEBHOOK_SECRET).",
            show_default=False,
        ),
    ] = None,
    exec_cmd: Annotated[
        str | None,
        typer.Option("--exec", help="Run this command per event (no shell), event JSON on stdin."),
    ] = None,
    notify: Annotated[
        str,
        option(WatchConfig, "notify"),
    ] = ",".join(_W.notify),
    open_timeout: Annotated[float, option(WatchConfig, "open_timeout")] = _W.open_timeout,
    read_timeout: Annotated[float, option(WatchConfig, "read_timeout")] = _W.read_timeout,
    duration: Annotated[
        float | None,
        option(WatchConfig, "duration"),
    ] = None,
    device: Device = _W.device,
    quiet: Quiet = False,
) -> None:
    """Watch camera streams and videos: track detections, alert once per object, keep events.

    Each source is read on its own thread (reconnected with backoff when it drops); detection
    samples the newest frame at --detect-fps; a track alerts once when it has --min-hits
    detections with a median score >= --alert-threshold, in a --zone if any, outside the
    source's --cooldown. Events (new, update, end, stream_down, stream_up) go to
    <out>/events.jsonl, with snapshots; --webhook and --exec get them too. Ctrl-C or SIGTERM
    ends the tracks and flushes everything.
    """
    from gunctl.core.watch.runner import watch as run_watch

    config = config_from(
        WatchConfig,
        locals(),
        sources=tuple(sources or ()),
        names=tuple(name or ()),
        checkpoint=weights,
        zones=tuple(zone or ()),
        notify=tuple(k.strip() for k in notify.split(",") if k.strip()),
    )
    stop, signals = threading.Event(), []
    view = _View(quiet)
    previous = _on_signals(stop, signals)
    try:
        result = run_watch(config, stop=stop, on_event=view.event, on_status=view.status)
    finally:
        view.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if not quiet:
        _summary(result)
    if signal.SIGINT in signals:
        raise typer.Exit(EXIT_INTERRUPTED)


def _on_signals(stop: threading.Event, seen: list) -> dict:
    """SIGINT and SIGTERM set ``stop`` (the loop ends tracks and flushes); a second SIGINT
    stops at once."""

    def handler(number, frame):
        if number == signal.SIGINT and signal.SIGINT in seen:
            raise KeyboardInterrupt
        seen.append(number)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, handler)
    return previous


class _View:
    """A live table per source on a terminal; plain lines (events, and a status line per
    source every PLAIN_STATUS_S) in logs and pipes."""

    def __init__(self, quiet: bool):
        self.quiet, self.live, self.last_plain = quiet, None, 0.0
        if not quiet and is_terminal():
            from rich.live import Live

            self.live = Live(console=console, refresh_per_second=2, transient=False)
            self.live.start()

    def event(self, event: dict) -> None:
        if self.quiet:
            return
        err_console.print(escape(_event_line(event)), soft_wrap=True)

    def status(self, rows) -> None:
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(_table(rows))
            return
        if time.monotonic() - self.last_plain >= PLAIN_STATUS_S:
            self.last_plain = time.monotonic()
            for row in rows:
                console.print(escape(_status_line(row)), soft_wrap=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _event_line(event: dict) -> str:
    kind, source = event["event"], event["source"]
    if "track" in event:
        return (
            f"{event['time']} {source} {kind}: track {event['track']} {event['class']} "
            f"score {event['score']:.2f} ({event['hits']} hits)"
            + (f" zones {','.join(event['zones'])}" if event.get("zones") else "")
        )
    detail = event.get("reason") or event.get("url") or ""
    return f"{event['time']} {source} {kind}" + (f": {detail}" if detail else "")


def _status_line(row) -> str:
    latency = "-" if row.latency is None else f"{row.latency:.2f}s"
    return (
        f"{row.name}: {row.state}, read {row.fps_read:.1f} fps, detected {row.fps_detected:.1f} "
        f"fps, latency {latency}, tracks {row.tracks}, alerts {row.alerts}"
    )


def _table(rows):
    from rich.table import Table

    table = Table(title="gunctl watch", title_justify="left")
    for column in ("source", "state", "fps read", "fps detected", "latency", "tracks", "alerts"):
        table.add_column(column, justify="left" if column in ("source", "state") else "right")
    for row in rows:
        table.add_row(
            escape(row.name),
            row.state,
            f"{row.fps_read:.1f}",
            f"{row.fps_detected:.1f}",
            "-" if row.latency is None else f"{row.latency:.2f} s",
            str(row.tracks),
            str(row.alerts),
        )
    return table


def _summary(result) -> None:
    rows = [
        ("run", result.run),
        ("alerts", str(result.alerts)),
        ("events", ", ".join(f"{k} {v}" for k, v in sorted(result.events.items())) or "none"),
        ("seconds", f"{result.seconds:.1f}"),
        ("events file", str(result.out / "events.jsonl")),
    ]
    if result.sink_failures:
        rows.append(("undelivered", str(result.sink_failures)))
    if is_terminal():
        console.print(key_value_table("Watch", rows, justify="left"))
        return
    for label, value in rows:
        console.print(f"{label}: {escape(value)}", soft_wrap=True)
