"""Which run's best becomes artifacts/models/fasterrcnn.pth: real training, tiny model."""

import dataclasses

import pytest
from helpers import share_data, tiny_config

from gunctl.config import Layout
from gunctl.core.checkpoint import load_checkpoint, save_checkpoint
from gunctl.core.trainer import fit


@pytest.mark.slow
def test_a_better_model_is_kept_unless_promoted(demo_layout, tmp_path):
    layout = Layout(share_data(tmp_path / "artifacts", demo_layout.root))
    first = fit(tiny_config(layout, subset=10, run_name="first"))
    assert first.model_copy == layout.best_model and "there was none" in first.promotion
    stored = load_checkpoint(layout.best_model)
    # the copy is the run's best, with its figures (the best-F1 threshold among them)
    run_best = load_checkpoint(first.best_checkpoint)
    assert stored["metrics"] == run_best["metrics"] and stored["epoch"] == run_best["epoch"]
    stored["best_metric"] = 2.0  # as if it had scored above anything a run can reach
    save_checkpoint(layout.best_model, stored)
    second = fit(tiny_config(layout, subset=10, run_name="second"))
    assert second.model_copy is None and "kept" in second.promotion
    assert load_checkpoint(layout.best_model)["run_name"] == "first"
    third = fit(dataclasses.replace(tiny_config(layout, subset=10, run_name="third"), promote=True))
    assert third.model_copy == layout.best_model and "--promote" in third.promotion
    assert load_checkpoint(layout.best_model)["run_name"] == "third"
