"""When a track becomes an alert, as pure functions of what the tracker saw (no I/O, no clock
of its own: every call gets the source's time ``t`` in seconds).

A track alerts once, when all hold: it was seen in at least ``min_hits`` detections, in at
least ``min_hit_ratio`` of the frames detected since it was first seen (a real gun is found in
most frames, a distractor that the detector takes for one now and then is not); the median
score of those is at least ``alert_threshold``; its box's bottom centre (where a person
stands) lies in one of the source's zones, when it has any; the source's last alert is at
least ``cooldown`` seconds old; and it is not a stationary object that already alerted here (a
drill on a table that the tracker loses and finds again would otherwise alert forever).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from gunctl.errors import UsageError

STATIONARY_MEMORY_S = 3600.0  # how long a stationary object's place stays known
STATIONARY_IOU = 0.5  # a new track this close to a known stationary object is that object
STATIONARY_MIN_HITS = 3  # a track needs this many hits to be judged stationary or moving


@dataclass(frozen=True)
class Zone:
    name: str
    points: tuple[tuple[float, float], ...]
    fractions: bool  # points are fractions of the frame's width and height
    source: str | None = None  # None: every source

    def contains(self, x: float, y: float, width: int, height: int) -> bool:
        scale = (width, height) if self.fractions else (1, 1)
        polygon = [(px * scale[0], py * scale[1]) for px, py in self.points]
        return _inside(polygon, x, y)


def parse_zone(text: str) -> Zone:
    """``NAME[@SOURCE]:x1,y1,x2,y2,x3,y3[,...]``: a polygon in pixels, or in fractions of the
    frame when every value is at most 1."""
    head, sep, body = text.partition(":")
    name, _, source = head.partition("@")
    try:
        values = [float(v) for v in body.split(",")] if sep else []
    except ValueError:
        values = []
    if not name or len(values) < 6 or len(values) % 2 or any(v < 0 for v in values):
        raise UsageError(
            f"--zone {text!r}: NAME[@SOURCE]:x1,y1,x2,y2,x3,y3[,...] (3 points or more, "
            "pixels or fractions of the frame, none negative)"
        )
    points = tuple(zip(values[::2], values[1::2], strict=True))
    return Zone(name, points, all(v <= 1 for v in values), source or None)


def _inside(polygon: list[tuple[float, float]], x: float, y: float) -> bool:
    """Ray casting (a point on an edge counts as inside)."""
    inside = False
    j = len(polygon) - 1
    for i, (xi, yi) in enumerate(polygon):
        xj, yj = polygon[j]
        if min(xi, xj) <= x <= max(xi, xj) and min(yi, yj) <= y <= max(yi, yj):
            cross = (xj - xi) * (y - yi) - (yj - yi) * (x - xi)
            if abs(cross) < 1e-9:
                return True
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def bottom_centre(box) -> tuple[float, float]:
    x1, _, x2, y2 = box
    return (x1 + x2) / 2, y2


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """What the rules know of one track: its hits (time, score, box)."""

    id: int
    label: str
    hits: list[tuple[float, float, tuple]] = field(default_factory=list)
    alerted: bool = False
    suppressed: str | None = None  # why it may not alert (stationary), once decided
    frames: int = 0  # frames of its source detected since its first hit, that one included

    @property
    def hit_ratio(self) -> float:
        return len(self.hits) / self.frames if self.frames else 1.0

    @property
    def scores(self) -> list[float]:
        return [score for _, score, _ in self.hits]

    @property
    def median_score(self) -> float:
        return statistics.median(self.scores) if self.hits else 0.0

    def moved(self) -> float:
        """The largest distance of the box's centre from its first place, in box sizes."""
        if not self.hits:
            return 0.0
        first = self.hits[0][2]
        size = max(first[2] - first[0], first[3] - first[1], 1e-6)
        cx, cy = (first[0] + first[2]) / 2, (first[1] + first[3]) / 2
        return (
            max(
                ((b[0] + b[2]) / 2 - cx) ** 2 + ((b[1] + b[3]) / 2 - cy) ** 2
                for _, _, b in self.hits
            )
            ** 0.5
            / size
        )


@dataclass
class AlertRules:
    """The rules of one source. ``hit()`` records a detection of a track; ``should_alert()``
    says whether it alerts now (and records it); ``ended()`` remembers stationary objects."""

    min_hits: int = 3
    alert_threshold: float = 0.5
    cooldown: float = 10.0
    zones: tuple[Zone, ...] = ()
    stationary: float = 0.1  # in box sizes: a track that moved less is stationary
    min_hit_ratio: float = 0.0
    last_alert: float | None = None
    known_stationary: list[tuple[float, tuple]] = field(default_factory=list)  # (until, box)

    def hit(self, track: Track, t: float, score: float, box) -> None:
        track.hits.append((t, float(score), tuple(float(v) for v in box)))

    def in_zones(self, box, width: int, height: int) -> list[str]:
        x, y = bottom_centre(box)
        return [zone.name for zone in self.zones if zone.contains(x, y, width, height)]

    def is_stationary(self, track: Track) -> bool:
        return len(track.hits) >= STATIONARY_MIN_HITS and track.moved() < self.stationary

    def should_alert(self, track: Track, t: float, width: int, height: int) -> bool:
        if track.alerted or len(track.hits) < self.min_hits:
            return False
        if track.hit_ratio < self.min_hit_ratio:
            return False
        if track.median_score < self.alert_threshold:
            return False
        box = track.hits[-1][2]
        if self.zones and not self.in_zones(box, width, height):
            return False
        if self.last_alert is not None and t - self.last_alert < self.cooldown:
            return False
        if self._known_stationary(track, t):
            track.suppressed = "stationary"
            return False
        track.alerted, track.suppressed, self.last_alert = True, None, t
        return True

    def ended(self, track: Track, t: float) -> None:
        """A track that alerted and never moved: its place is remembered, so the same object
        found again (a new track) does not alert again."""
        if track.alerted and self.is_stationary(track):
            self.known_stationary.append((t + STATIONARY_MEMORY_S, track.hits[-1][2]))

    def _known_stationary(self, track: Track, t: float) -> bool:
        self.known_stationary = [(until, b) for until, b in self.known_stationary if until > t]
        if not self.known_stationary or not self.is_stationary(track):
            return False
        box = track.hits[-1][2]
        return any(iou(box, known) >= STATIONARY_IOU for _, known in self.known_stationary)
