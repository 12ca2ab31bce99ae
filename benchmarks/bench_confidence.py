"""What the bootstrap over images (``gunctl.core.confidence.intervals``) costs per validation.

Synthetic detections, made like a trained detector's on the sample: 1-3 true boxes per image,
a jittered detection on 80 % of them, 0-10 false alarms per image with lower scores; one or two
classes. Each size is timed three times (median, seconds): the matching (once per validation)
and the 1000 resamples, beside torchmetrics' own mAP on the same data for scale.

    .venv/bin/python benchmarks/bench_confidence.py [--json FILE] [--resamples 1000]
"""

from __future__ import annotations

import statistics
import time

from _common import base_parser, environment, print_table, write_json


def make_case(images: int, classes: int, seed: int = 0):
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(images):
        count = int(rng.integers(1, 4))
        xy = rng.uniform(0, 300, (count, 2))
        truth = np.concatenate([xy, xy + rng.uniform(20, 120, (count, 2))], axis=1)
        labels = rng.integers(1, classes + 1, count)
        found = truth[rng.random(count) < 0.8]
        found = found + rng.normal(0, 5, found.shape)
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 1)
        alarms = int(rng.integers(0, 11))
        start = rng.uniform(0, 300, (alarms, 2))
        fake = np.concatenate([start, start + rng.uniform(20, 120, (alarms, 2))], axis=1)
        boxes = np.concatenate([found, fake])
        scores = np.concatenate([rng.uniform(0.4, 1.0, len(found)), rng.uniform(0, 0.7, alarms)])
        order = np.argsort(-scores)
        predictions.append(
            {
                "boxes": torch.tensor(boxes[order], dtype=torch.float32),
                "scores": torch.tensor(scores[order], dtype=torch.float32),
                "labels": torch.tensor(rng.integers(1, classes + 1, len(boxes))[order]),
            }
        )
        targets.append({"boxes": torch.tensor(truth, dtype=torch.float32), "labels": labels})
    for target in targets:
        target["labels"] = torch.as_tensor(target["labels"], dtype=torch.int64)
    return predictions, targets


def median_seconds(function, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    from gunctl.core import confidence
    from gunctl.core.engine import mean_average_precision

    rows, figures = [], []
    for images, classes in ((30, 1), (60, 1), (300, 1), (300, 2), (1000, 1)):
        predictions, targets = make_case(images, classes)
        detections = sum(len(p["scores"]) for p in predictions)
        match = median_seconds(lambda p=predictions, t=targets: confidence.match(p, t))
        whole = median_seconds(
            lambda p=predictions, t=targets: confidence.intervals(p, t, resamples=args.resamples)
        )
        names = [f"c{k}" for k in range(classes)]
        coco = median_seconds(
            lambda p=predictions, t=targets, n=names: mean_average_precision(p, t, n)
        )
        result = confidence.intervals(predictions, targets, resamples=args.resamples)
        low, high = result["map_50_ci"]
        row = [images, classes, detections, match, whole, coco, f"{low:.3f}-{high:.3f}"]
        rows.append(row)
        figures.append(
            dict(
                images=images,
                classes=classes,
                detections=detections,
                match_s=match,
                intervals_s=whole,
                torchmetrics_map_s=coco,
                map_50_ci=[low, high],
            )
        )
    print_table(
        ["images", "classes", "detections", "match s", "intervals s", "torchmetrics mAP s", "CI"],
        rows,
        title=f"bootstrap over images, {args.resamples} resamples (median of 3)",
    )
    write_json(
        args.json, {"environment": environment(), "resamples": args.resamples, "rows": figures}
    )


if __name__ == "__main__":
    main()
