"""Precision, recall and F1 on hand-made boxes (engine.detection_counts)."""

from __future__ import annotations

import pytest
import torch

from gunctl.core.engine import detection_counts


def pred(boxes, scores):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def truth(boxes):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}


def counts(predictions, targets, score=0.5, iou=0.5):
    return detection_counts(predictions, targets, score, iou)


def test_one_hit_one_miss_one_false_alarm():
    result = counts(
        [pred([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8])],
        [truth([[0, 0, 10, 9], [20, 20, 30, 30]])],
    )
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(0.5)


def test_low_scores_do_not_count():
    result = counts([pred([[0, 0, 10, 10]], [0.4])], [truth([[0, 0, 10, 10]])])
    assert (result["tp"], result["fp"], result["fn"]) == (0, 0, 1)
    assert result["precision"] == 0.0 and result["f1"] == 0.0


def test_a_true_box_matches_at_most_one_detection():
    result = counts([pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])], [truth([[0, 0, 10, 10]])])
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 0)


def test_iou_threshold_decides_a_match():
    # IoU of these two boxes: 50 / 150 = 1/3
    p, t = pred([[0, 0, 10, 10]], [0.9]), truth([[5, 0, 15, 10]])
    assert counts([p], [t], iou=0.5)["tp"] == 0
    assert counts([p], [t], iou=0.3)["tp"] == 1


def test_negative_images_and_sums_over_images():
    result = counts(
        [pred([], []), pred([[0, 0, 5, 5]], [0.9]), pred([[0, 0, 10, 10]], [0.9])],
        [truth([]), truth([]), truth([[0, 0, 10, 10]])],
    )
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 0)
    assert result["recall"] == 1.0 and result["precision"] == 0.5
    empty = counts([pred([], [])], [truth([])])
    assert (empty["precision"], empty["recall"], empty["f1"]) == (0.0, 0.0, 0.0)
