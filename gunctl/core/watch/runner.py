"""The watch loop: readers -> the inference core -> a tracker per source -> alert rules ->
events (events.jsonl, snapshots, sinks).

Detection samples each source at ``--detect-fps``, taking the newest frame each time, and
batches the frames of all sources that are due into one ``detect`` call; readers, sinks and
snapshots never wait for it, nor it for them (bounded queues everywhere).
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from gunctl.config import WatchConfig
from gunctl.core.video import Frame, is_device, is_stream
from gunctl.core.watch.events import EventLog, Snapshots, new_event, now_iso
from gunctl.core.watch.reader import Reader, ReaderOptions
from gunctl.core.watch.rules import AlertRules, Track, Zone, parse_zone
from gunctl.core.watch.tracking import BoxTracker
from gunctl.errors import DataError, GunctlError, UsageError

log = logging.getLogger("gunctl")
UPDATE_S = 2.0  # at most one `update` event per track in this many seconds
FLUSH_S = 10.0  # at exit, sinks get this long to deliver what is queued
LATENCIES = 50  # the status's latency is the median of the last this many detections


@dataclass
class TrackInfo(Track):
    """A track as the events describe it (the rules' Track plus its best frame)."""

    source: str = ""
    best_score: float = -1.0
    best_box: tuple = ()
    best_pixels: object = None
    best_t: float = 0.0
    first_t: float = 0.0
    first_seen: str = ""
    last_seen: str = ""
    last_t: float = 0.0
    zones: list[str] = field(default_factory=list)
    last_event_t: float = -math.inf
    alert_t: float = 0.0
    snapshot: dict | None = None
    snapshot_stale: bool = False


@dataclass
class SourceStatus:
    name: str
    state: str  # connecting, up, down, ended
    fps_read: float
    fps_detected: float
    latency: float | None  # s from a frame's arrival to its detections (median of the last 50)
    tracks: int
    alerts: int
    frames_read: int
    frames_detected: int
    outages: int


@dataclass
class WatchResult:
    run: str
    out: Path
    events: dict[str, int] = field(default_factory=dict)  # count per kind
    sources: list[SourceStatus] = field(default_factory=list)
    seconds: float = 0.0
    detector: str = ""
    threshold: float = 0.0
    interrupted: bool = False
    sink_failures: int = 0

    @property
    def alerts(self) -> int:
        return self.events.get("new", 0)


def source_names(sources: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    """``--name`` in order, then a name from each URL (host and last path part) or file stem;
    only letters, digits, '_', '.', '-'; made unique with -2, -3..."""
    result: list[str] = []
    for index, location in enumerate(sources):
        if index < len(names):
            name = names[index]
        elif is_stream(location):
            parts = urlsplit(location)
            tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
            name = "-".join(p for p in (parts.hostname or "stream", tail) if p)
        else:
            name = Path(location).stem or "source"
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:64] or "source"
        base, number = name, 1
        while name in result:
            number += 1
            name = f"{base}-{number}"
        result.append(name)
    return result


def check_sources(sources: tuple[str, ...]) -> None:
    """URLs and devices are tried when read; a local file must be a regular file (a FIFO
    named like a video would block the open for ever)."""
    from gunctl.core.fileio import not_regular

    for location in sources:
        if is_stream(location) or is_device(location):
            continue
        if "://" in location:
            scheme = location.split("://", 1)[0]
            raise UsageError(f"{location}: unsupported scheme {scheme}:// (rtsp, rtmp, http(s))")
        reason = not_regular(Path(location))
        if reason is not None:
            raise UsageError(f"{location}: {reason}")


def zones_by_source(zones: tuple[str, ...], names: list[str]) -> dict[str, tuple[Zone, ...]]:
    parsed = [parse_zone(text) for text in zones]
    for zone in parsed:
        if zone.source is not None and zone.source not in names:
            raise UsageError(f"--zone {zone.name}@{zone.source}: no source named {zone.source}")
    return {name: tuple(z for z in parsed if z.source in (None, name)) for name in names}


class _Source:
    """One source's reader, tracker, rules and counters (used by the loop's thread only,
    apart from the reader's own thread)."""

    def __init__(self, name: str, reader: Reader, config: WatchConfig, zones, lossless: bool):
        self.name, self.reader, self.lossless = name, reader, lossless
        self.tracker_timeout = math.ceil(config.track_timeout * config.detect_fps)
        self.tracker = BoxTracker(self.tracker_timeout)
        self.end_said = False
        self.rules = AlertRules(
            config.min_hits,
            config.alert_threshold,
            config.cooldown,
            zones,
            config.stationary_px,
            config.min_hit_ratio,
        )
        self.tracks: dict[int, TrackInfo] = {}
        self.next_due = 0.0
        self.detected = self.alerts = 0
        self.latencies: deque[float] = deque(maxlen=LATENCIES)
        self.counted = (time.monotonic(), 0, 0)  # for the status's rates

    def status(self) -> SourceStatus:
        now, read, detected = time.monotonic(), self.reader.frames_read, self.detected
        then, read0, detected0 = self.counted
        span = max(now - then, 1e-6)
        self.counted = (now, read, detected)
        reader = self.reader
        state = (
            "ended"
            if reader.finished
            else "up"
            if reader.up
            else "down"
            if reader.outages
            else "connecting"
        )
        return SourceStatus(
            self.name,
            state,
            (read - read0) / span,
            (detected - detected0) / span,
            statistics.median(self.latencies) if self.latencies else None,
            len(self.tracks),
            self.alerts,
            read,
            detected,
            reader.outages,
        )


class _Watch:
    def __init__(self, config: WatchConfig, detector, stop, on_event, on_status):
        self.config, self.detector, self.stop = config, detector, stop
        self.on_event, self.on_status = on_event, on_status
        self.run = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        self.result = WatchResult(self.run, config.out)
        self.lock = threading.Lock()  # events come from the readers' threads too
        self.log = EventLog(config.out)
        self.snapshots = Snapshots(config.out, self.run)
        self.sinks = _open_sinks(config)
        self.wake = threading.Event()
        names = source_names(config.sources, config.names)
        zones = zones_by_source(config.zones, names)
        options = ReaderOptions(
            config.detect_fps,
            config.realtime,
            config.open_timeout,
            config.read_timeout,
            config.reconnect_min,
            config.reconnect_max,
            config.max_pixels,
        )
        self.sources = []
        for name, location in zip(names, config.sources, strict=True):
            reader = Reader(name, location, options, self.emit_stream, self.wake)
            self.sources.append(_Source(name, reader, config, zones[name], not reader.live))

    # --- events ------------------------------------------------------------------------------

    def emit(self, kind: str, source: str, fields: dict) -> dict:
        event = new_event(kind, source, run=self.run, **fields)
        with self.lock:
            self.log.write(event)
            self.result.events[kind] = self.result.events.get(kind, 0) + 1
        if kind in self.config.notify:
            for sink in self.sinks:
                sink.put(event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def emit_stream(self, kind: str, source: str, fields: dict) -> None:
        self.emit(kind, source, fields)

    def emit_track(self, kind: str, source: _Source, track: TrackInfo) -> None:
        if track.snapshot_stale or (kind == "new" and track.snapshot is None):
            track.snapshot_stale = False
            try:
                track.snapshot = self.snapshots.save(
                    source.name,
                    track.id,
                    track.best_pixels,
                    track.best_box,
                    track.label,
                    track.best_score,
                )
            except (OSError, GunctlError) as exc:  # a full disk: the alert still goes out
                log.warning("snapshot of %s track %d not written: %s", source.name, track.id, exc)
        self.emit(
            kind,
            source.name,
            {
                "track": track.id,
                "class": track.label,
                "score": round(track.best_score, 5),
                "median_score": round(track.median_score, 5),
                "hits": len(track.hits),
                "hit_ratio": round(track.hit_ratio, 3),
                "box": [round(v, 2) for v in track.best_box],
                "last_box": [round(v, 2) for v in track.hits[-1][2]],
                "zones": track.zones,
                "first_seen": track.first_seen,
                "last_seen": track.last_seen,
                "frame_time": round(track.last_t if kind == "end" else track.best_t, 4),
                "first_frame_time": round(track.first_t, 4),
                "alert_frame_time": round(track.alert_t, 4),
                "stationary": source.rules.is_stationary(track),
                "snapshot": track.snapshot,
            },
        )
        track.last_event_t = track.last_t

    # --- the loop ----------------------------------------------------------------------------

    def go(self) -> WatchResult:
        started = time.monotonic()
        deadline = started + self.config.duration if self.config.duration else math.inf
        for source in self.sources:
            source.reader.start()
        last_status = started
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                batch = self._due()
                if batch:
                    self._detect(batch)
                else:
                    self._end_tracks_of_down_sources()
                    if all(s.reader.finished for s in self.sources) and not self._pending():
                        break
                    self.wake.wait(0.05)
                    self.wake.clear()
                if self.on_status is not None and time.monotonic() - last_status >= 1.0:
                    last_status = time.monotonic()
                    self.on_status([s.status() for s in self.sources])
        finally:
            self.result.interrupted = self.stop.is_set()
            self._close()
            self.result.seconds = time.monotonic() - started
        if not self.result.events.get("stream_up") and all(s.reader.finished for s in self.sources):
            reasons = "; ".join(f"{s.name}: {s.reader.last_reason}" for s in self.sources)
            raise DataError(f"nothing could be read ({reasons})")
        return self.result

    def _pending(self) -> bool:
        return any(s.reader._newest is not None for s in self.sources)

    def _due(self) -> list[tuple[_Source, Frame]]:
        now, step = time.monotonic(), 1.0 / self.config.detect_fps
        batch = []
        for source in self.sources:
            if not source.lossless and now < source.next_due:
                continue
            frame = source.reader.take()
            if frame is None:
                continue
            if not source.lossless:  # on schedule, but never a burst to catch up
                behind = now - source.next_due
                source.next_due = source.next_due + step if behind < step else now + step
            batch.append((source, frame))
        return batch

    def _detect(self, batch: list[tuple[_Source, Frame]]) -> None:
        import torch

        tensors = [torch.from_numpy(frame.pixels).permute(2, 0, 1) for _, frame in batch]
        try:
            records = self.detector.detect(tensors, score_threshold=self.config.score_threshold)
        except (RuntimeError, ValueError) as exc:  # e.g. a frame too small for the model
            from gunctl.errors import first_line

            log.warning("detection failed on %d frame(s): %s", len(batch), first_line(exc))
            return
        done = time.monotonic()
        for (source, frame), record in zip(batch, records, strict=True):
            source.detected += 1
            source.latencies.append(done - frame.arrival)
            t = frame.time if source.lossless else frame.arrival
            self._step(source, frame, record, t)

    def _step(self, source: _Source, frame: Frame, record: dict, t: float) -> None:
        """One detected frame of one source: tracker, rules, events."""
        labels = record.get("label_ids", record["labels"])
        names = dict(zip(labels, record["labels"], strict=True))
        seen = source.tracker.update(record["boxes"], record["scores"], labels)
        height, width = frame.pixels.shape[:2]
        stamp = now_iso()
        for track in source.tracks.values():
            track.frames += 1
        for item in seen:
            if not item.hit:
                continue
            track = source.tracks.get(item.id)
            if track is None:
                label = names.get(item.label, str(item.label))
                track = TrackInfo(item.id, label, source=source.name, first_t=t, first_seen=stamp)
                track.frames = 1
                source.tracks[item.id] = track
            source.rules.hit(track, t, item.score, item.box)
            track.last_t, track.last_seen = t, stamp
            track.zones = source.rules.in_zones(item.box, width, height)
            if item.score > track.best_score:
                track.best_score, track.best_box, track.best_t = item.score, item.box, t
                track.best_pixels = frame.pixels
                track.snapshot_stale = track.alerted
            if source.rules.should_alert(track, t, width, height):
                track.alert_t = t
                source.alerts += 1
                self.emit_track("new", source, track)
            elif track.alerted and track.snapshot_stale and t - track.last_event_t >= UPDATE_S:
                self.emit_track("update", source, track)
        for ended in source.tracker.ended:
            self._end(source, ended, t)

    def _end(self, source: _Source, track_id: int, t: float) -> None:
        track = source.tracks.pop(track_id, None)
        if track is None:
            return
        source.rules.ended(track, t)
        if track.alerted:
            self.emit_track("end", source, track)

    def _end_tracks_of_down_sources(self) -> None:
        """Tracks of a source that is down or ended end now; a file that ended (its last
        frame processed) says so with ``stream_end``."""
        for source in self.sources:
            reader = source.reader
            if reader.up and not reader.finished or reader._newest is not None:
                continue
            if source.tracks:
                for track_id in list(source.tracks):
                    self._end(source, track_id, source.tracks[track_id].last_t)
                source.tracker = BoxTracker(source.tracker_timeout)
            if reader.finished and not source.end_said:
                source.end_said = True
                self.emit("stream_end", source.name, {"frames": reader.frames_read})

    def _close(self) -> None:
        for source in self.sources:
            for track_id in list(source.tracks):
                self._end(source, track_id, source.tracks[track_id].last_t)
        for source in self.sources:
            source.reader.stop.set()
        for source in self.sources:
            source.reader.close(timeout=self.config.read_timeout + 1)
        for sink in self.sinks:
            sink.close(FLUSH_S)
            self.result.sink_failures += sink.failed + sink.dropped
        self.result.sources = [s.status() for s in self.sources]
        self.log.close()


def _open_sinks(config: WatchConfig) -> list:
    from gunctl.core.watch.sinks import ExecSink, WebhookSink

    sinks = []
    if config.webhook:
        sinks.append(
            WebhookSink(
                config.webhook,
                config.webhook_secret,
                config.webhook_timeout,
                config.webhook_retries,
                config.outbox,
            )
        )
    if config.exec_cmd:
        sinks.append(ExecSink(config.exec_cmd, config.outbox))
    return sinks


def watch(
    config: WatchConfig,
    *,
    detector=None,
    stop: threading.Event | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_status: Callable[[list[SourceStatus]], None] | None = None,
) -> WatchResult:
    """Watch ``config.sources`` until they end (files), ``config.duration`` passes or ``stop``
    is set (SIGINT/SIGTERM in the CLI): then every track ends (``end`` events), the sinks get
    ``FLUSH_S`` seconds to deliver, and events.jsonl is closed. ``detector``: anything with
    ``detect(images, score_threshold=...)`` (default: ``load_detector(config.checkpoint)``)."""
    config.check()
    check_sources(config.sources)
    names = source_names(config.sources, config.names)
    zones_by_source(config.zones, names)  # refuse bad zones before loading anything
    if detector is None:
        from gunctl.core.inference import load_detector

        detector = load_detector(**config.detector_kwargs())
        log.info(
            "model: %s; score threshold %.4f (%s); runtime %s",
            config.checkpoint,
            detector.threshold,
            detector.threshold_origin,
            detector.identity.get("runtime", "torch"),
        )
    runner = _Watch(config, detector, stop or threading.Event(), on_event, on_status)
    runner.result.detector = str(getattr(detector, "path", config.checkpoint))
    runner.result.threshold = float(
        config.score_threshold
        if config.score_threshold is not None
        else getattr(detector, "threshold", 0.0)
    )
    return runner.go()
