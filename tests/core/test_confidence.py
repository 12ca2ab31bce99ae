"""The bootstrap over images (core/confidence.py): its point estimate is torchmetrics' map_50,
hand-made cases give the AP worked out by hand, and the interval behaves as an interval."""

import numpy as np
import pytest
import torch

from gunctl.core import confidence


def _pred(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = [1] * len(boxes) if labels is None else labels
    return {
        "boxes": boxes,
        "scores": torch.as_tensor(scores, dtype=torch.float32).reshape(-1),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
    }


def _truth(boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = [1] * len(boxes) if labels is None else labels
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}


def _torchmetrics_map_50(predictions, targets) -> float:
    """What gunctl reports as mAP@0.5 (engine.mean_average_precision's metric)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    metric.update(predictions, targets)
    return float(metric.compute()["map_50"])


def _ours(predictions, targets) -> float:
    return float(confidence.map_50(confidence.match(predictions, targets))[0])


BOX = [0, 0, 10, 10]
FAR = [50, 50, 60, 60]


def _two_images():
    """Image 0: a hit at 0.9 and a false alarm at 0.8; image 1: a hit at 0.7. In score order
    precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; the envelope reads 1 at the 51 recall points
    up to 0.5 and 2/3 at the 50 above: AP = (51 + 50 * 2/3) / 101."""
    predictions = [_pred([BOX, FAR], [0.9, 0.8]), _pred([BOX], [0.7])]
    targets = [_truth([BOX]), _truth([BOX])]
    return predictions, targets


def test_hand_made_one_class():
    predictions, targets = _two_images()
    expected = (51 + 50 * 2 / 3) / 101
    assert _ours(predictions, targets) == pytest.approx(expected, abs=1e-9)
    assert _torchmetrics_map_50(predictions, targets) == pytest.approx(expected, abs=1e-6)


def test_hand_made_two_classes_and_an_image_without_truth():
    """Class 1 as above; class 2 has one true box (image 1) and only a false alarm (image 0):
    AP 0. A third image has no true box and one class-1 false alarm below every hit."""
    predictions, targets = _two_images()
    predictions[0] = _pred([BOX, FAR, [20, 20, 30, 30]], [0.9, 0.8, 0.95], [1, 1, 2])
    targets[1] = _truth([BOX, [30, 30, 40, 40]], [1, 2])
    predictions.append(_pred([FAR], [0.1]))
    targets.append(_truth([]))
    # class 1: recall 1 is reached before the extra false alarm, which changes nothing
    expected = ((51 + 50 * 2 / 3) / 101 + 0.0) / 2
    assert _ours(predictions, targets) == pytest.approx(expected, abs=1e-9)
    assert _torchmetrics_map_50(predictions, targets) == pytest.approx(expected, abs=1e-6)


def test_false_alarm_ranked_first_halves_the_precision():
    """A false alarm at 0.9 on an image without truth, the hit at 0.6: precision 0 then 1/2,
    the envelope 1/2 at every recall point: AP 0.5."""
    predictions = [_pred([BOX], [0.6]), _pred([FAR], [0.9])]
    targets = [_truth([BOX]), _truth([])]
    assert _ours(predictions, targets) == pytest.approx(0.5, abs=1e-9)
    assert _torchmetrics_map_50(predictions, targets) == pytest.approx(0.5, abs=1e-6)


def test_no_detections_scores_zero():
    predictions = [_pred([], []), _pred([], [])]
    targets = [_truth([BOX]), _truth([])]
    assert _ours(predictions, targets) == 0.0
    assert _torchmetrics_map_50(predictions, targets) == 0.0


def test_no_truth_at_all_is_undefined():
    predictions, targets = [_pred([BOX], [0.9])], [_truth([])]
    assert np.isnan(_ours(predictions, targets))
    result = confidence.intervals(predictions, targets, resamples=50)
    assert result["map_50_ci"] is None and result["recall_ci"] is None


def _random_case(seed: int, images: int = 40, classes: int = 2):
    """True boxes, detections near some of them (jittered, wrong class now and then) and
    false alarms, with scores that do not say which is which perfectly."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(images):
        count = int(rng.integers(0, 4))
        xy = rng.uniform(0, 200, (count, 2))
        truth = np.concatenate([xy, xy + rng.uniform(10, 60, (count, 2))], axis=1)
        labels = rng.integers(1, classes + 1, count)
        boxes, scores, pred_labels = [], [], []
        for box, label in zip(truth, labels, strict=True):
            if rng.random() < 0.8:
                moved = box + rng.normal(0, 4, 4)  # kept a proper box, as detectors give
                boxes.append(np.concatenate([moved[:2], np.maximum(moved[2:], moved[:2] + 1)]))
                scores.append(rng.uniform(0.3, 1.0))
                pred_labels.append(label if rng.random() < 0.9 else 1 + label % classes)
        for _ in range(int(rng.integers(0, 4))):
            start = rng.uniform(0, 200, 2)
            boxes.append(np.concatenate([start, start + rng.uniform(10, 60, 2)]))
            scores.append(rng.uniform(0.0, 0.8))
            pred_labels.append(int(rng.integers(1, classes + 1)))
        order = np.argsort(-np.array(scores), kind="stable")  # as detectors give them
        boxes = np.array(boxes).reshape(-1, 4)[order].tolist()
        predictions.append(_pred(boxes, np.array(scores)[order], np.array(pred_labels)[order]))
        targets.append(_truth(truth.tolist(), labels.tolist()))
    return predictions, targets


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_point_estimate_is_torchmetrics_map_50(seed):
    predictions, targets = _random_case(seed, classes=1 + seed % 2)
    assert _ours(predictions, targets) == pytest.approx(
        _torchmetrics_map_50(predictions, targets), abs=1e-6
    )


def test_more_than_100_detections_per_image_count_the_best_100():
    rng = np.random.default_rng(5)
    truth = [[i * 20, 0, i * 20 + 10, 10] for i in range(30)]
    boxes = [*truth, *([FAR] * 120)]
    scores = [*rng.uniform(0, 1, 30).tolist(), *rng.uniform(0, 1, 120).tolist()]
    predictions, targets = [_pred(boxes, scores)], [_truth(truth)]
    assert _ours(predictions, targets) == pytest.approx(
        _torchmetrics_map_50(predictions, targets), abs=1e-6
    )


def _width(interval):
    return interval[1] - interval[0]


def test_interval_holds_the_estimate_and_narrows_with_more_images():
    predictions, targets = _random_case(7, images=30)
    point = _ours(predictions, targets)
    once = confidence.intervals(predictions, targets, resamples=1000)
    low, high = once["map_50_ci"]
    assert low < point < high
    assert once["ci_level"] == 0.95 and once["ci_resamples"] == 1000
    for key in ("precision_ci", "recall_ci"):
        assert 0.0 <= once[key][0] < once[key][1] <= 1.0
    four = confidence.intervals(predictions * 4, targets * 4, resamples=1000)
    assert _width(four["map_50_ci"]) < 0.75 * _width(once["map_50_ci"])  # ~1/2 expected
    assert _width(four["recall_ci"]) < 0.75 * _width(once["recall_ci"])


def test_identical_images_give_a_degenerate_interval():
    predictions = [_pred([BOX, FAR], [0.9, 0.8])] * 12
    targets = [_truth([BOX, [20, 20, 30, 30]])] * 12
    point = _ours(predictions, targets)
    result = confidence.intervals(predictions, targets, resamples=200)
    assert result["map_50_ci"] == pytest.approx([point, point], abs=1e-12)
    assert result["precision_ci"] == pytest.approx([0.5, 0.5])
    assert result["recall_ci"] == pytest.approx([0.5, 0.5])


def test_seeded_and_repeatable():
    predictions, targets = _random_case(3, images=25)
    first = confidence.intervals(predictions, targets, resamples=300, seed=4)
    assert confidence.intervals(predictions, targets, resamples=300, seed=4) == first
    assert confidence.intervals(predictions, targets, resamples=300, seed=5) != first


def test_precision_and_recall_at_the_threshold_match_detection_counts():
    """With every image drawn once, the counts behind the intervals are engine's."""
    from gunctl.core.engine import detection_counts

    predictions, targets = _random_case(11, images=30)
    matches = confidence.match(predictions, targets, score_threshold=0.5)
    tp, fp, fn = matches.counts.sum(axis=0).tolist()
    expected = detection_counts(predictions, targets, 0.5, 0.5)
    assert (tp, fp, fn) == (expected["tp"], expected["fp"], expected["fn"])
