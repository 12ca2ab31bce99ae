"""gunctl sweep through the CLI and as real processes: a missing extra, a bad space, a kill
and --resume, and two processes sharing one study's storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import TINY_TRIAL, share_data

TINY_FIXED = {**TINY_TRIAL, "epochs": 1}


def write_space(path, params=None):
    params = params or {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    path.write_text(yaml.safe_dump({"fixed": TINY_FIXED, "params": params}))
    return path


def sweep_process(*args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "gunctl", "sweep", "--quiet", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )


def load(storage: str, name: str):
    import optuna

    from gunctl.core.sweep import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage))


# --- without training ------------------------------------------------------------------------


def test_without_optuna_sweep_says_which_extra_to_install(tmp_path, monkeypatch, gunctl):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    result = gunctl("sweep", "--space", write_space(tmp_path / "s.yaml"), "--out", tmp_path)
    assert result.exit_code == 2
    assert 'pip install "gunctl[sweep]"' in result.output


def test_a_bad_space_or_a_missing_study_is_one_line(tmp_path, gunctl):
    space = tmp_path / "s.yaml"
    space.write_text("params:\n  lr: {low: 1, high: 1}\n")
    result = gunctl("sweep", "--space", space, "--out", tmp_path)
    assert result.exit_code == 2 and "low 1 is not below high 1" in result.output
    result = gunctl("sweep", "--show", "--study", "none", "--out", tmp_path)
    assert result.exit_code == 2 and "run a sweep first" in result.output
    result = gunctl("sweep", "--space", space, "--trials", "0", "--out", tmp_path)
    assert result.exit_code == 2 and "--trials" in result.output


# --- processes -------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_sweep_resumes_and_runs_the_killed_trial_again(tmp_path, demo_layout, gunctl):
    from optuna.trial import TrialState

    out = share_data(tmp_path / "out", demo_layout.root)
    space = write_space(tmp_path / "space.yaml")
    process = sweep_process("--space", space, "--trials", "1", "--out", out, "--pruner", "none")
    started = out / "runs" / "space-000" / "config.yaml"  # written as the trial starts training
    deadline = time.monotonic() + 180
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGKILL)  # no chance to record anything
    process.wait()
    storage = f"sqlite:///{out / 'sweeps' / 'optuna.db'}"
    assert load(storage, "space").trials[0].state == TrialState.RUNNING  # left behind

    result = gunctl("sweep", "--space", space, "--trials", "1", "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "trial 0 was killed: running its options again" in result.output
    killed, again = load(storage, "space").trials
    assert killed.state == TrialState.FAIL and killed.user_attrs["failure"] == "killed"
    assert again.state == TrialState.COMPLETE and again.user_attrs["retry_of"] == 0
    assert again.params == killed.params  # the same options, trained to the end
    assert (out / "runs" / "space-001" / "best.pth").exists()


@pytest.mark.slow
def test_two_processes_share_one_study_and_run_each_trial_once(tmp_path, demo_layout):
    from optuna.trial import TrialState

    from gunctl.core.checkpoint import load_checkpoint

    out = share_data(tmp_path / "out", demo_layout.root)
    space = write_space(tmp_path / "space.yaml")
    storage = f"journal:{tmp_path / 'study.log'}"  # Optuna's journal file: one machine
    common = ("--space", space, "--trials", "2", "--out", out, "--storage", storage)
    processes = [sweep_process(*common, "--study", "shared", "--seed", str(s)) for s in (1, 2)]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]

    trials = load(storage, "shared").trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2  # N in all, not N per process
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.user_attrs.get("failure") == "surplus" for t in others)  # dropped untrained
    assert {t.user_attrs["pid"] for t in done} == {p.pid for p in processes}  # both worked
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(t.user_attrs["run_name"] for t in done)  # no trial trained twice
    for name in runs:
        checkpoint = load_checkpoint(out / "runs" / name / "last.pth")
        assert checkpoint["epoch"] == 1 and len(checkpoint["history"]) == 1
