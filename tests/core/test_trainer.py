"""The trainer with a tiny model on the demo data, on the CPU."""

import math

import pytest
import torch
from helpers import share_data, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gunctl.config import LOSS_KEYS, Layout, to_dict
from gunctl.core.callbacks import Callback
from gunctl.core.checkpoint import load_checkpoint
from gunctl.core.trainer import fit
from gunctl.errors import DivergedError


@pytest.fixture
def layout(demo_layout, tmp_path):
    """The session's demo data, with runs written to this test's own folder."""
    return Layout(share_data(tmp_path / "artifacts", demo_layout.root))


@pytest.mark.slow
def test_one_epoch_writes_checkpoints_and_tensorboard(layout):
    result = fit(tiny_config(layout, subset=10))
    assert result.epochs == 1 and len(result.history) == 1
    checkpoint = load_checkpoint(result.last_checkpoint)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "config",
        "class_names",
        "split_checksum",
        "metrics",
        "versions",
        "weights_origin",
        "best_metric",
    ):
        assert key in checkpoint, key
    assert checkpoint["epoch"] == 1 and checkpoint["class_names"] == ["background", "gun"]
    assert checkpoint["config"]["model"]["name"] == "fasterrcnn_mobilenet_v3_large_320_fpn"
    assert checkpoint["weights_origin"] == "none"
    assert result.best_checkpoint.exists() and result.model_copy.exists()
    assert load_checkpoint(result.model_copy)["epoch"] == 1
    record = checkpoint["metrics"]
    for key in LOSS_KEYS:
        assert math.isfinite(record["train"][key]) and math.isfinite(record["val"][key])
    assert record["val"]["map_50"] is not None

    events = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in (
        "step/loss",
        "step/loss_box_reg",
        "train/loss",
        "val/loss_classifier",
        "val/map_50",
        "train/lr",
        "perf/images_per_s",
        "perf/epoch_seconds",
        "step/lr",
    ):
        assert tag in tags["scalars"], tag
    assert events.Scalars("val/map_50")[0].value == pytest.approx(record["val"]["map_50"])
    assert len(events.Scalars("step/loss")) == record["train"]["images"] // 4 + (
        record["train"]["images"] % 4 > 0
    )
    assert "val/image_0" in tags["images"]


@pytest.mark.slow
def test_resume_equals_a_straight_run(layout):
    straight = fit(tiny_config(layout, subset=10, epochs=4, run_name="straight"))
    fit(tiny_config(layout, subset=10, epochs=2, run_name="resumed"))
    resumed = fit(tiny_config(layout, subset=10, epochs=4, resume="resumed"))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)
        assert a["val"]["loss"] == pytest.approx(b["val"]["loss"], rel=1e-5)
    first = load_checkpoint(straight.last_checkpoint)["model"]
    second = load_checkpoint(resumed.last_checkpoint)["model"]
    for key in first:
        assert torch.allclose(first[key].float(), second[key].float(), atol=1e-5), key
    events = EventAccumulator(str(resumed.run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # one run, appended


@pytest.mark.slow
def test_a_fine_tuning_run_resumes_after_its_source_checkpoint_is_gone(layout, tmp_path):
    """--resume rebuilds the model from the run's own checkpoint: the checkpoint the run
    started from (--weights PATH) is not read again, and may have been removed."""
    import dataclasses

    source = fit(tiny_config(layout, subset=8, run_name="source")).last_checkpoint
    moved = tmp_path / "source-copy.pth"
    moved.write_bytes(source.read_bytes())
    model = dataclasses.asdict(tiny_config(layout).model) | {"weights": str(moved)}
    tuned = fit(tiny_config(layout, model, subset=8, epochs=1, run_name="tuned"))
    origin = load_checkpoint(tuned.last_checkpoint)["weights_origin"]
    assert origin == f"checkpoint:{moved}"
    moved.unlink()
    again = fit(tiny_config(layout, model, subset=8, epochs=2, resume="tuned"))
    assert [r["epoch"] for r in again.history] == [1, 2]
    assert load_checkpoint(again.last_checkpoint)["weights_origin"] == origin  # as recorded


@pytest.mark.slow
def test_same_seed_same_losses(layout):
    a = fit(tiny_config(layout, subset=8, run_name="a"))
    b = fit(tiny_config(layout, subset=8, run_name="b"))
    assert a.history[0]["train"]["loss"] == b.history[0]["train"]["loss"]
    c = fit(tiny_config(layout, subset=8, run_name="c", seed=1))
    assert c.history[0]["train"]["loss"] != a.history[0]["train"]["loss"]


class PoisonAfterFirstEpoch(Callback):
    def on_epoch_start(self, state):
        if state.epoch == 1:
            with torch.no_grad():
                next(state.model.parameters()).fill_(float("nan"))


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(layout):
    config = tiny_config(layout, subset=8, epochs=3)
    with pytest.raises(DivergedError, match="epoch 2, batch 1.*last good checkpoint.*last.pth"):
        fit(config, [PoisonAfterFirstEpoch()])
    checkpoint = load_checkpoint(config.layout.run_dir("tiny") / "last.pth")
    assert checkpoint["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )


@pytest.mark.slow
def test_validation_leaves_batchnorm_statistics_alone(layout):
    from gunctl.core.dataset import GunDataset, collate
    from gunctl.core.engine import evaluate
    from gunctl.core.model import build_model
    from gunctl.core.split import load_split

    config = tiny_config(layout)
    model = build_model(config.model).model
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert before
    split = load_split(layout.split_file)
    loader = torch.utils.data.DataLoader(
        GunDataset(layout.raw, split["val"][:4]), batch_size=2, collate_fn=collate
    )
    result = evaluate(model, loader, torch.device("cpu"))
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.metrics["loss"] > 0 and result.metrics["images"] == 4
    again = evaluate(model, loader, torch.device("cpu"))
    assert again.metrics["loss"] == result.metrics["loss"]  # sampling is seeded: repeatable


@pytest.mark.slow
def test_config_is_stored_whole(layout):
    result = fit(tiny_config(layout, subset=6, optimizer="sgd", lr_schedule="step"))
    stored = load_checkpoint(result.last_checkpoint)["config"]
    expected = to_dict(tiny_config(layout, subset=6, optimizer="sgd", lr_schedule="step"))
    expected.pop("layout")
    assert stored["optimizer"] == "sgd" and stored["lr_schedule"] == "step"
    assert stored["model"] == expected["model"]


_EXPLICIT = ("model.name", "model.min_size", "model.max_size", "lr", "epochs", "warmup_steps")


def _scratch(layout, **overrides):
    """The scratch recipe (mosaic, crop, zoom-out, photometric, multi-scale, EMA, AdamW) on the
    tiny model: what a user gets without pretrained weights, small enough for a test."""
    values = dict(recipe="scratch", explicit=_EXPLICIT, subset=10, lr=1e-3, warmup_steps=2)
    return tiny_config(layout, **{**values, **overrides})


@pytest.mark.slow
def test_scratch_recipe_resume_equals_a_straight_run_with_ema(layout):
    # a constant schedule, as in the plain test: a resume with more epochs stretches a cosine
    constant = {"lr_schedule": "constant", "explicit": (*_EXPLICIT, "lr_schedule")}
    straight = fit(_scratch(layout, epochs=3, run_name="straight", **constant))
    fit(_scratch(layout, epochs=1, run_name="resumed", **constant))
    resumed = fit(_scratch(layout, epochs=3, resume="resumed", **constant))
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)
        assert a["val"]["map_50"] == pytest.approx(b["val"]["map_50"], abs=1e-6)
    first, second = (load_checkpoint(r.last_checkpoint) for r in (straight, resumed))
    assert first["config"]["recipe"] == "scratch" and first["config"]["mosaic"] > 0
    assert first["ema"]["updates"] == second["ema"]["updates"] > 0
    for key in first["model"]:  # "model" is the EMA: the same average either way
        assert torch.allclose(first["model"][key].float(), second["model"][key].float(), atol=1e-5)
        assert torch.allclose(
            first["ema"]["train_model"][key].float(),
            second["ema"]["train_model"][key].float(),
            atol=1e-5,
        )
    assert not torch.equal(first["model"][key], first["ema"]["train_model"][key])


@pytest.mark.slow
def test_minutes_budget_ends_with_a_finished_schedule(layout):
    explicit = tuple(name for name in _EXPLICIT if name != "epochs")
    config = _scratch(layout, minutes=0.02, ema=False, run_name="budget", explicit=explicit)
    result = fit(config)
    stored = load_checkpoint(result.last_checkpoint)
    assert stored["config"]["epochs"] == result.epochs == len(result.history)
    assert stored["config"]["minutes"] == 0.02
    # cosine to its floor: the last step's learning rate is 1 % of the peak
    assert result.history[-1]["lr"] == pytest.approx(0.01 * config.lr, rel=1e-3)
    assert result.history[-1]["val"]  # the last epoch is always validated


@pytest.mark.slow
def test_minutes_budget_takes_a_refit_count_and_finishes_its_schedule(layout, monkeypatch):
    from gunctl.core.budget import Budget, Plan

    refits = []  # (done, epochs) of each refit the trainer asked for

    def final(self, now, val, least=1):
        self.planned = True
        return Plan(epochs=6, val_every=2)

    def refit(self, now, epoch_wall, val, done, epochs):
        refits.append((done, epochs))
        assert epoch_wall > 0
        return Plan(epochs=4, val_every=1) if done == 2 else None  # the later epochs ran slower

    monkeypatch.setattr(Budget, "final", final)
    monkeypatch.setattr(Budget, "refit", refit)
    explicit = tuple(name for name in _EXPLICIT if name != "epochs")
    config = _scratch(layout, minutes=5, ema=False, run_name="refit", explicit=explicit)
    result = fit(config)
    assert refits == [(2, 6), (3, 4)]  # after every epoch but the last
    assert result.epochs == len(result.history) == 4
    assert load_checkpoint(result.last_checkpoint)["config"]["epochs"] == 4
    assert result.history[-1]["lr"] == pytest.approx(0.01 * config.lr, rel=1e-3)  # decayed
    assert [bool(r["val"]) for r in result.history] == [True, True, True, True]


@pytest.mark.slow
def test_val_every_skips_validation_but_saves(layout):
    result = fit(tiny_config(layout, subset=6, epochs=3, val_every=2, run_name="sparse"))
    assert [bool(r["val"]) for r in result.history] == [False, True, True]
    assert load_checkpoint(result.last_checkpoint)["epoch"] == 3
