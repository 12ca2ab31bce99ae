"""Detections linked across frames: norfair's tracker (as Frigate uses it), IoU matching of
boxes of the same class, a Kalman filter for each track's motion.

Chosen over ByteTrack (the ``trackers`` package) by measurement (benchmarks/README.md, "gunctl
watch"); ``norfair`` is imported inside ``BoxTracker`` (the ``watch`` extra).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.2  # a detection continues a track when their boxes overlap at least this much

_ids = itertools.count(1)  # track ids, unique in the process (over all sources)


@dataclass(frozen=True)
class Seen:
    """A track in one frame: ``hit`` when a detection of this frame belongs to it."""

    id: int
    label: int
    box: tuple[float, float, float, float]
    score: float
    hit: bool


class BoxTracker:
    """One source's tracker: ``update(boxes, scores, labels)`` once per detected frame returns
    the live tracks; a track unseen for ``timeout_frames`` updates ends (``ended`` lists them
    after the update that ended them)."""

    def __init__(self, timeout_frames: int):
        from norfair import Tracker

        hits = max(1, int(timeout_frames))
        self._hits = hits
        self._tracker = Tracker(
            distance_function="iou",
            distance_threshold=1 - MATCH_IOU,
            hit_counter_max=hits,
            initialization_delay=0,  # every detection is a track at once; the rules confirm
            pointwise_hit_counter_max=hits,
        )
        self._ids: dict[int, int] = {}  # norfair's id -> ours
        self.ended: list[int] = []

    def update(self, boxes, scores, labels) -> list[Seen]:
        from norfair import Detection

        detections = [
            Detection(
                np.array([[b[0], b[1]], [b[2], b[3]]], dtype=float),
                scores=np.array([s, s], dtype=float),
                label=int(label),
                data=(tuple(float(v) for v in b), float(s)),
            )
            for b, s, label in zip(boxes, scores, labels, strict=True)
        ]
        now = {id(d) for d in detections}
        live = self._tracker.update(detections=detections)
        seen, alive = [], set()
        for obj in live:
            if obj.id is None:
                continue
            if obj.id not in self._ids:
                self._ids[obj.id] = next(_ids)
            ours = self._ids[obj.id]
            alive.add(obj.id)
            detection = obj.last_detection
            hit = detection is not None and id(detection) in now
            if hit:
                # norfair lets a young track die after fewer misses than an old one (its
                # counter starts at 1); here every track ends ``timeout_frames`` after its
                # last detection (a gun missed twice at the start stays one track)
                obj.hit_counter = self._hits
                box, score = detection.data
            else:
                estimate = obj.estimate
                box = (*map(float, estimate[0]), *map(float, estimate[1]))
                score = math.nan
            seen.append(Seen(ours, int(obj.label), box, score, hit))
        gone = [nid for nid in self._ids if nid not in alive]
        self.ended = [self._ids.pop(nid) for nid in gone]
        return seen

    def live_ids(self) -> list[int]:
        return list(self._ids.values())
