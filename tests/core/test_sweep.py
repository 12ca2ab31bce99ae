"""Sweeps (core/sweep.py): the space file, trial configs, and a real Optuna study of tiny
training runs on the demo data (pruning, --show, best.yaml trained again)."""

from __future__ import annotations

import pytest
import yaml
from helpers import TINY_MODEL, TINY_TRIAL, share_data

from gunctl.config import Layout, SweepConfig
from gunctl.core import sweep
from gunctl.errors import UsageError

# A trial in seconds: the tiny model at 64 px on 10 training images, one process.
TINY_FIXED = dict(TINY_TRIAL)


def write_space(path, params, fixed=None, enqueue=None):
    data = {"fixed": {**TINY_FIXED, **(fixed or {})}, "params": params}
    if enqueue:
        data["enqueue"] = enqueue
    path.write_text(yaml.safe_dump(data))
    return path


# --- without training ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"weight_decy": {"low": 0, "high": 1}},
            "unknown option 'weight_decy' (did you mean 'weight_decay'?)",
        ),
        ({"lr": {"low": 2.0, "high": 1.0}}, "low 2.0 is not below high 1.0"),
        ({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "a log range starts above 0"),
        ({"lr": [1, 2]}, "give {low: , high: } or {choices: [...]}"),
        ({"optimizer": {"choices": []}}, "choices is a non-empty list"),
        ({}, "a space file needs `params:`"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_file(tmp_path, params, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    with pytest.raises(UsageError) as caught:
        sweep.load_space(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_a_space_reads_ranges_choices_fixed_and_enqueued(tmp_path):
    params = {
        "lr": {"low": 1e-5, "high": 1e-2, "log": True},
        "fpn_channels": {"low": 32, "high": 128, "step": 32},
        "optimizer": {"choices": ["adam", "sgd"]},
    }
    path = write_space(tmp_path / "s.yaml", params, enqueue=[{"lr": 3e-4}])
    space = sweep.load_space(path)
    assert space.params["lr"] == {
        "low": 1e-5,
        "high": 1e-2,
        "log": True,
        "step": None,
        "int": False,
    }
    assert space.params["fpn_channels"]["int"] and space.params["fpn_channels"]["step"] == 32
    assert space.params["optimizer"] == {"choices": ["adam", "sgd"]}
    assert space.fixed["model"] == TINY_MODEL and space.enqueue == [{"lr": 3e-4}]


def test_trial_options_become_a_train_config_the_recipe_keeps(tmp_path):
    layout = Layout(tmp_path)
    options = {**TINY_FIXED, "lr": 0.002, "multiscale": "64,80", "fpn_levels": "3,2,4"}
    config = sweep.trial_config(options, layout, "s-000")
    assert config.lr == 0.002 and config.model.name == TINY_MODEL
    assert config.model.train_sizes == (64, 80) and config.model.fpn_levels == (2, 3, 4)
    assert config.run_name == "s-000" and config.layout == layout
    assert {"lr", "model.min_size", "model.name"} <= set(config.explicit)
    with pytest.raises(UsageError, match="--lr"):
        sweep.trial_config({"lr": -1.0}, layout, "s-001")


def test_sweep_config_checks_its_ranges(tmp_path):
    with pytest.raises(UsageError, match="--trials"):
        SweepConfig(space=tmp_path / "s.yaml", trials=0).check()
    with pytest.raises(UsageError, match="--space"):
        SweepConfig().check()
    with pytest.raises(UsageError, match="--pruner"):
        SweepConfig(space=tmp_path / "s.yaml", pruner="hyperband").check()


# --- a study ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_trials_poor_ones_pruned_and_best_yaml_trains_again(tmp_path, demo_layout, gunctl):
    import optuna

    from gunctl.core.checkpoint import load_checkpoint

    out = share_data(tmp_path / "out", demo_layout.root)
    layout = Layout(out)
    # lr from 1e3 to 1e4 wrecks the weights in one epoch (mAP@0.5 0, or a diverged loss);
    # the enqueued first trial, at lr 1e-3, sets the median the others fall below.
    space = write_space(
        tmp_path / "space.yaml",
        {"lr": {"low": 1e3, "high": 1e4, "log": True}},
        fixed={"epochs": 2},
        enqueue=[{"lr": 1e-3}],
    )
    config = SweepConfig(
        space=space, layout=layout, trials=4, warmup_epochs=0, startup_trials=1, seed=0,
        mlflow=True,
    )  # fmt: skip
    seen = []
    result = sweep.run_sweep(config, on_trial=lambda trial, _: seen.append(trial.number))
    assert seen == [0, 1, 2, 3] and result.ran == [0, 1, 2, 3]
    states = {t.number: t.state for t in result.trials}
    assert states[0] == "complete" and list(states.values()).count("pruned") == 3

    study = optuna.load_study(study_name="space", storage=sweep.storage_url(config))
    first = study.trials[0]
    checkpoint = load_checkpoint(layout.last_checkpoint("space-000"))
    assert first.value == pytest.approx(checkpoint["best_metric"])  # the trial's best mAP@0.5
    assert first.intermediate_values == {
        r["epoch"]: pytest.approx(r["val"]["map_50"]) for r in checkpoint["history"]
    }  # each epoch reported, with the epoch as step
    for trial in study.trials[1:]:  # pruned after their first epoch: one epoch trained
        assert load_checkpoint(layout.last_checkpoint(f"space-{trial.number:03d}"))["epoch"] == 1
        stored = yaml.safe_load(layout.run_config(f"space-{trial.number:03d}").read_text())
        assert stored["lr"] == pytest.approx(trial.params["lr"]) and stored["lr"] >= 1e3

    # MLflow: the study's run, and one child run per trial (pruned ones KILLED)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.info.run_name == "sweep space"]
    assert parent.info.status == "FINISHED"
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert sorted(children) == [f"space-{n:03d}" for n in range(4)]
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parent.info.run_id}
    assert children["space-000"].info.status == "FINISHED"
    assert all(children[f"space-00{n}"].info.status == "KILLED" for n in (1, 2, 3))
    assert children["space-001"].data.tags["gunctl.sweep.state"] == "pruned"

    shown = sweep.show(config)
    assert shown.result.best.number == 0 and shown.best_yaml.is_file()
    best = yaml.safe_load(shown.best_yaml.read_text())
    assert best == yaml.safe_load(layout.run_config("space-000").read_text())
    assert best["lr"] == 1e-3

    # gunctl train --config best.yaml trains the best trial again (its first epoch here)
    result = gunctl(
        "train", "--config", shown.best_yaml, "--out", out, "--run-name", "rerun",
        "--epochs", "1", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rerun = load_checkpoint(layout.last_checkpoint("rerun"))
    assert rerun["config"]["lr"] == 1e-3 and rerun["config"]["model"]["min_size"] == 64
    assert rerun["history"][0]["val"]["map_50"] == pytest.approx(first.intermediate_values[1])
    assert set(shown.importances) <= {"lr"}  # what Optuna can tell from one complete trial
