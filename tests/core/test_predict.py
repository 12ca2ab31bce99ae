"""The core of predict and export: sources, thresholds, drawing, promotion (no CLI)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import jpeg_bytes

from gunctl.core import inputs
from gunctl.core.callbacks import _promotion
from gunctl.core.checkpoint import default_score_threshold
from gunctl.core.draw import style
from gunctl.core.engine import best_f1_threshold, detection_counts


def test_collect_walks_folders_globs_and_zips(tmp_path):
    root = tmp_path / "pics"
    (root / "deep" / "er").mkdir(parents=True)
    (root / "a.jpg").write_bytes(jpeg_bytes())
    (root / "deep" / "er" / "a.jpg").write_bytes(jpeg_bytes())
    (root / "notes.txt").write_text("not an image")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes())
    (root / "link.jpg").symlink_to(outside)
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x/1.png", jpeg_bytes(fmt="PNG"))
        zf.writestr("../evil.jpg", jpeg_bytes())
        zf.writestr("readme.md", "hi")
    found = inputs.collect([str(root), str(archive), str(tmp_path / "*.jpg"), "missing.jpg"])
    outputs = [item.output for item in found.items]
    assert outputs == ["pics/a.jpg", "pics/deep/er/a.jpg", "more/x/1.png", "secret.jpg"]
    assert [item.member for item in found.items] == [None, None, "x/1.png", None]
    problems = "\n".join(found.problems)
    assert "link.jpg: symlink leading outside" in problems
    assert "../evil.jpg: unsafe member left out" in problems
    assert "missing.jpg: no such file or folder" in problems
    assert len(found.problems) == 3
    assert sorted(Path(p).name for p in found.ignored) == ["more.zip:readme.md", "notes.txt"]
    assert inputs.read_item(found.items[2]) == zipfile.ZipFile(archive).read("x/1.png")


def test_output_names_stay_unique_and_inside(tmp_path):
    names = inputs._Names()
    assert names.unique("a/1.jpg") == "a/1.jpg"
    assert names.unique("a/1.jpg") == "a/1_2.jpg"
    assert names.unique("A/1.JPG") == "A/1_3.JPG"  # names clash case-insensitively
    assert ".." not in names.unique("../../x.jpg")


def test_best_f1_threshold_is_the_f1_maximum():
    truth = [{"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30.0]])}]
    pred = [
        {
            "boxes": torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30.0]]),
            "scores": torch.tensor([0.9, 0.8, 0.3]),
        }
    ]
    found = best_f1_threshold(pred, truth)
    best = max(detection_counts(pred, truth, t, 0.5)["f1"] for t in (0.3, 0.8, 0.9))
    assert found["best_f1_threshold"] == pytest.approx(0.3, abs=1e-4)
    assert found["best_f1"] == pytest.approx(best)
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]
    assert best_f1_threshold(empty, truth)["best_f1_threshold"] is None


def test_default_threshold_comes_from_the_checkpoint():
    assert default_score_threshold({"metrics": {"val": {"best_f1_threshold": 0.37}}})[0] == 0.37
    assert default_score_threshold({"metrics": None})[0] == 0.5
    assert default_score_threshold({"metrics": {"val": {"best_f1_threshold": 7}}})[0] == 0.5


def test_drawing_scales_with_the_image():
    small, large = style(280, 180), style(1920, 1080)
    assert small[0] < large[0] and small[1] < large[1]


def _state(tmp_path, best, split="s1", promote=False, run="new"):
    layout = SimpleNamespace(best_model=tmp_path / "models" / "fasterrcnn.pth")
    config = SimpleNamespace(layout=layout, promote=promote)
    return SimpleNamespace(config=config, best_metric=best, split_checksum=split, run_name=run)


@pytest.mark.parametrize(
    ("existing", "best", "promote", "replaced"),
    [
        (None, 0.1, False, True),
        ({"run": "old", "split": "s1", "map_50": 0.5}, 0.4, False, False),
        ({"run": "old", "split": "s1", "map_50": 0.5}, 0.5, False, True),
        ({"run": "old", "split": "s2", "map_50": 0.1}, 0.9, False, False),
        ({"run": "old", "split": "s1", "map_50": 0.9}, 0.1, True, True),
        ({"run": "new", "split": "s1", "map_50": 0.9}, 0.1, False, True),
    ],
)
def test_model_promotion_rule(tmp_path, existing, best, promote, replaced):
    decision, words = _promotion(_state(tmp_path, best, promote=promote), existing)
    assert decision is replaced
    assert ("kept" in words) is not replaced
