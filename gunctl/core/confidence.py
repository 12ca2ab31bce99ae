"""How far a validation figure can be trusted: a bootstrap over images.

A val mAP@0.5 of 0.71 on 30 images is one draw; drawing the same number of images again (with
replacement) from those 30, many times, shows how much the figure moves with the images it rests
on. The detections are matched once (``match``); each resample then only re-weights the images,
so 1000 resamples cost a few numpy cumulative sums, not 1000 COCO evaluations.

The matching and the average precision are COCO's at IoU 0.5 (what torchmetrics' ``map_50``
computes with its faster_coco_eval backend): per image and class, the 100 best detections in
score order each take the unmatched true box of highest IoU >= 0.5; per class, precision is made
monotone and read at 101 recall points; mAP is the mean over the classes with true boxes. With
every image weighted once, ``map_50`` here equals torchmetrics' (tests/core/test_confidence.py).
A resample lists its images in their original order (the figure does not depend on the order
except for exact score ties between images, where COCO's own result depends on it too).

Precision and recall at the score threshold follow ``engine.detection_counts``: detections at or
above the threshold, matched to true boxes of any class, greedily by score.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

MAX_DETECTIONS = 100  # COCO's last maxDets, the one map_50 uses
RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
_CHUNK = 2_000_000  # resamples x detections held at once (16 MB per float64 array)


@dataclass(frozen=True)
class Matches:
    """Detections matched once: per class, the detections in COCO's accumulation order."""

    images: int
    truths: np.ndarray  # (images, classes): true boxes per image and class
    detections: list[tuple[np.ndarray, np.ndarray]]  # per class: (image index, hit), sorted
    counts: np.ndarray  # (images, 3): tp, fp, fn at the score threshold, any class


def match(
    predictions: Sequence[dict],
    targets: Sequence[dict],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> Matches:
    """Match each image's detections (``boxes`` x1 y1 x2 y2, ``scores``, ``labels``) to its
    true boxes (``boxes``, ``labels``); tensors or arrays."""
    preds = [_arrays(p, ("boxes", "scores", "labels")) for p in predictions]
    truth = [_arrays(t, ("boxes", "labels")) for t in targets]
    classes = sorted({int(k) for t in truth for k in t["labels"]})
    truths = np.array(
        [[int(np.sum(t["labels"] == k)) for k in classes] for t in truth], dtype=np.int64
    ).reshape(len(truth), len(classes))
    detections = [_class_detections(preds, truth, k) for k in classes]
    pairs = zip(preds, truth, strict=True)
    counts = [_threshold_counts(p, t, score_threshold, iou_threshold) for p, t in pairs]
    counts = np.array(counts, dtype=np.int64).reshape(len(truth), 3)
    return Matches(len(truth), truths, detections, counts)


def map_50(matches: Matches, weights: np.ndarray | None = None) -> np.ndarray:
    """mAP@0.5 per row of ``weights`` (resamples x images: how often each image is drawn);
    NaN where no true box was drawn. Without weights: the one figure on all images."""
    if weights is None:
        weights = np.ones((1, matches.images))
    weights = np.asarray(weights, dtype=np.float64)
    per_class = np.full((len(weights), len(matches.detections)), np.nan)
    for column, (image, hit) in enumerate(matches.detections):
        truths = weights @ matches.truths[:, column].astype(np.float64)
        for rows in _chunks(len(weights), max(len(hit), 1)):
            per_class[rows, column] = _average_precision(weights[rows][:, image], hit, truths[rows])
    with warnings.catch_warnings():  # a resample with no true box: NaN, and no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_class, axis=1)


def intervals(
    predictions: Sequence[dict],
    targets: Sequence[dict],
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> dict:
    """95 % percentile intervals (bootstrap over images) of mAP@0.5, and of precision and
    recall at ``score_threshold``: ``map_50_ci``, ``precision_ci``, ``recall_ci`` as
    [low, high] (None where undefined), with ``ci_level`` and ``ci_resamples``."""
    matches = match(predictions, targets, score_threshold, iou_threshold)
    out: dict = {"map_50_ci": None, "precision_ci": None, "recall_ci": None}
    out.update(ci_level=level, ci_resamples=resamples)
    if matches.images == 0:
        return out
    weights = resample_weights(matches.images, resamples, seed)
    tp, fp, fn = (weights @ matches.counts[:, k].astype(np.float64) for k in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)  # detection_counts' rule
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
    out["map_50_ci"] = percentile_interval(map_50(matches, weights), level)
    if matches.counts[:, [0, 2]].sum() > 0:  # some true box: precision and recall mean something
        out["precision_ci"] = percentile_interval(precision, level)
        out["recall_ci"] = percentile_interval(recall, level)
    return out


def resample_weights(images: int, resamples: int, seed: int = SEED) -> np.ndarray:
    """(resamples, images): how often each image is drawn, ``images`` draws with replacement."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, images, size=(resamples, images))
    cells = (drawn + np.arange(resamples)[:, None] * images).ravel()
    return np.bincount(cells, minlength=resamples * images).reshape(resamples, images) * 1.0


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The central ``level`` interval of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


@cache
def recall_points() -> np.ndarray:
    """The 101 recall points as torchmetrics passes them to COCO: float32 ``torch.linspace``
    (0.14 is 0.14000000059604645 there), which decides whether a recall of 7/50 reaches it."""
    import torch

    return np.array(torch.linspace(0.0, 1.00, 101).tolist(), dtype=np.float64)


def _average_precision(weights: np.ndarray, hit: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """COCO's AP at one IoU threshold for each row: ``weights`` (rows, detections) the draws of
    each detection's image, detections in accumulation order; ``truths`` (rows,) true boxes."""
    rows = len(weights)
    ap = np.where(truths > 0, 0.0, np.nan)  # a class with no true box drawn: undefined
    if weights.shape[1] == 0:
        return ap
    tp = np.cumsum(weights * hit, axis=1)
    fp = np.cumsum(weights * ~hit, axis=1)
    precision = tp / (fp + tp + np.spacing(1))  # as pycocotools writes it
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    # COCO reads the envelope at the first detection whose recall tp / truths reaches each
    # recall point; tp counts are whole numbers, so find the least count that reaches it.
    points = recall_points()
    safe = np.maximum(truths, 1.0)[:, None]
    need = np.ceil(points[None, :] * safe)
    need = np.where((need - 1) / safe >= points, need - 1, need)  # float rounding
    need = np.where(need / safe < points, need + 1, need)
    stride = float(safe.max() + 2)  # rows side by side in one sorted array
    offsets = np.arange(rows)[:, None] * stride
    flat = np.searchsorted((tp + offsets).ravel(), (need + offsets).ravel(), side="left")
    index = flat.reshape(rows, -1) - np.arange(rows)[:, None] * weights.shape[1]
    inside = index < weights.shape[1]
    read = np.take_along_axis(envelope, np.minimum(index, weights.shape[1] - 1), axis=1)
    q = np.where(inside, read, 0.0)
    return np.where(truths > 0, q.mean(axis=1), ap)


def _class_detections(preds: list[dict], truth: list[dict], label: int):
    """One class's detections over all images in COCO's accumulation order: per image the
    100 best (stable by score), concatenated in image order, then stable-sorted by score."""
    images, scores, hits = [], [], []
    for index, (p, t) in enumerate(zip(preds, truth, strict=True)):
        mine = np.flatnonzero(p["labels"] == label)
        mine = mine[np.argsort(-p["scores"][mine], kind="mergesort")][:MAX_DETECTIONS]
        gt = t["boxes"][t["labels"] == label]
        hits.append(_greedy(p["boxes"][mine], gt, 0.5, last_on_ties=True))
        scores.append(p["scores"][mine])
        images.append(np.full(len(mine), index))
    if not scores:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    return np.concatenate(images)[order].astype(np.int64), np.concatenate(hits)[order]


def _threshold_counts(p: dict, t: dict, score_threshold: float, iou_threshold: float):
    kept = np.flatnonzero(p["scores"] >= score_threshold)
    kept = kept[np.argsort(-p["scores"][kept], kind="mergesort")]
    hits = int(_greedy(p["boxes"][kept], t["boxes"], iou_threshold).sum())
    return hits, len(kept) - hits, len(t["boxes"]) - hits


def _greedy(boxes: np.ndarray, truth: np.ndarray, threshold: float, last_on_ties=False):
    """Per detection (score order): whether it took a free true box at IoU >= threshold, the
    free box of highest IoU (COCO takes the last of equal ones, torch's argmax the first)."""
    hits = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(truth) == 0:
        return hits
    iou = _iou(boxes, truth)
    free = np.ones(len(truth), dtype=bool)
    for row, values in enumerate(iou):
        values = np.where(free, values, -1.0)
        best = (
            len(values) - 1 - int(np.argmax(values[::-1]))
            if last_on_ties
            else int(np.argmax(values))
        )
        if values[best] >= threshold:
            free[best], hits[row] = False, True
    return hits


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _arrays(record: dict, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for key in keys:
        value = record[key]
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        kind = np.int64 if key == "labels" else np.float64
        out[key] = value.astype(kind).reshape((-1, 4) if key == "boxes" else (-1,))
    return out


def _chunks(rows: int, width: int):
    step = max(1, _CHUNK // width)
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))
