"""MLflow tracking (core/tracking.py) with real MLflow stores: the embedded SQLite store, an
`mlflow server` on 127.0.0.1 (over HTTP, then stopped mid-run), and torchrun with gloo."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import TINY_HEAD, TINY_MODEL, run_gunctl, share_data, tiny_config

from gunctl.config import Layout
from gunctl.core import tracking
from gunctl.core.callbacks import Callback

SMALL = {"min_size": 64, "max_size": 96}  # the tiny model at its smallest: seconds per epoch


def _config(layout, **overrides):
    values = dict(subset=12, log_images=1, mlflow=True, run_name="tracked")
    values.update(overrides)
    return tiny_config(layout, SMALL, **values)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(client):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# --- without training ------------------------------------------------------------------------


def test_epoch_metrics_use_tensorboard_names_with_numbers_only():
    record = {
        "epoch": 3,
        "lr": 1e-3,
        "seconds": 2.5,
        "train": {"loss": 1.0, "loss_classifier": 0.5, "images_per_s": 4.0},
        "val": {"map_50": 0.25, "map": None, "f1": 0.5, "per_class": {"gun [x]": {"map": 0.1}}},
    }
    assert tracking.epoch_metrics(record) == {
        "train/lr": 1e-3,
        "train/loss": 1.0,
        "train/loss_classifier": 0.5,
        "train/images_per_s": 4.0,
        "val/map_50": 0.25,
        "val/f1": 0.5,
        "val_per_class/map/gun _x_": 0.1,
        "perf/epoch_seconds": 2.5,
    }


def test_params_are_the_config_yaml_names(tmp_path):
    from gunctl.config import train_options

    config = tiny_config(Layout(tmp_path), lr=0.002)
    params = tracking.run_params(config)
    assert set(params) == set(train_options(config))
    assert params["lr"] == "0.002" and params["model"] == TINY_MODEL
    assert params["box_head_dim"] == str(TINY_HEAD)


def test_store_defaults_to_sqlite_under_the_output_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(tmp_path / "out")
    assert tracking.tracking_uri(layout) == f"sqlite:///{(tmp_path / 'out' / 'mlflow.db')}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri(layout) == "http://127.0.0.1:1"


def test_mlflow_ui_serves_the_store_train_writes_on_loopback(tmp_path, monkeypatch):
    from gunctl.errors import UsageError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    command = tracking.ui_command(Layout(tmp_path), "127.0.0.1", 5001)
    assert command[1:4] == ["-m", "mlflow", "ui"]
    shown = dict(zip(command[4::2], command[5::2], strict=True))
    assert shown["--host"] == "127.0.0.1" and shown["--port"] == "5001"
    assert shown["--backend-store-uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert shown["--default-artifact-root"] == (tmp_path / "mlartifacts").as_uri()
    with pytest.raises(UsageError, match="--port"):
        tracking.ui_command(Layout(tmp_path), "127.0.0.1", 70000)


def test_without_the_extra_mlflow_says_which_to_install(tmp_path, monkeypatch, gunctl, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    # on by MLFLOW_TRACKING_URI alone: a warning, and training goes on without tracking
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="gunctl"):
        assert tracking.resolve_flag(None) is False
    assert "MLflow is not installed" in caplog.text
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    result = gunctl("train", "--mlflow", "--out", tmp_path, "--epochs", "1")
    assert result.exit_code == 2
    assert 'pip install "gunctl[mlflow]"' in result.output
    result = gunctl("validate", tmp_path / "none.pth", "--mlflow")
    assert result.exit_code == 2 and "gunctl[mlflow]" in result.output
    assert tracking.resolve_flag(False) is False


def test_the_cli_imports_neither_mlflow_nor_optuna_before_a_command_needs_them():
    code = (
        "import sys, gunctl.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'optuna')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the embedded store ----------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_store_logs_resumes_registers_and_validate_logs_to_the_run(
    tmp_path, demo_layout, monkeypatch, gunctl
):
    import mlflow.pytorch
    import torch

    from gunctl.core.checkpoint import load_checkpoint
    from gunctl.core.trainer import fit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # to load the model
    layout = Layout(share_data(tmp_path / "out", demo_layout.root))
    config = _config(layout)
    first = fit(config, [tracking.MlflowTracker(layout, log_model=False)])
    run_id = load_checkpoint(first.last_checkpoint)["mlflow_run_id"]
    assert run_id
    # resume: the same MLflow run goes on (epoch 2 at step 2), and the model is registered
    resumed = dataclasses.replace(config, epochs=2, resume="tracked", register="tiny-gun")
    second = fit(resumed, [tracking.MlflowTracker(layout, register="tiny-gun")])
    last = load_checkpoint(second.last_checkpoint)
    assert last["mlflow_run_id"] == run_id

    client = _client(f"sqlite:///{layout.root / 'mlflow.db'}")
    (run,) = _runs(client)  # one run for the two processes' worth of training
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    stored = yaml.safe_load((layout.run_dir("tracked") / "config.yaml").read_text())
    assert set(run.data.params) == set(stored)
    assert run.data.params["lr"] == "0.001" and run.data.params["min_size"] == "64"
    history = [record["val"]["map_50"] for record in last["history"]]  # the checkpoint's own
    assert _history(client, run_id, "val/map_50") == [(1, history[0]), (2, history[1])]
    assert [s for s, _ in _history(client, run_id, "train/loss")] == [1, 2]
    split = json.loads(layout.split_file.read_text())
    tags = run.data.tags
    assert tags["gunctl.manifest_hash"] == split["manifest_checksum"]
    assert tags["gunctl.split_hash"] == last["split_checksum"]
    assert tags["gunctl.class_names"] == "gun"
    assert tags["torch.version"] == torch.__version__
    assert tags["gunctl.resumed_from"].endswith("last.pth")

    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint", "config.yaml", "metrics.json", "tensorboard"} <= names
    best = client.download_artifacts(run_id, "checkpoint/best.pth", str(tmp_path / "dl"))
    assert load_checkpoint(Path(best))["kind"] == "weights"
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in last["model"].items())
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 80, 96)])
    assert set(out) >= {"boxes", "scores", "labels"}
    (version,) = client.search_model_versions("name='tiny-gun'")
    assert version.run_id == run_id

    # validate --mlflow: the figures go to the run that trained the checkpoint
    result = gunctl(
        "validate", layout.run_dir("tracked") / "best.pth", "--out", layout.root, "--json",
        "--mlflow", "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    figures = _history(client, run_id, "validate/map_50")
    assert figures == [(last["best_epoch"], pytest.approx(report["metrics"]["map_50"]))]
    assert len(_runs(client)) == 1


class _StopAtEpochStart(Callback):
    def __init__(self, exc: BaseException):
        self.exc = exc

    def on_epoch_start(self, state) -> None:
        raise self.exc


@pytest.mark.slow
def test_the_run_is_marked_failed_or_killed_with_training(tmp_path, demo_layout, monkeypatch):
    from gunctl.core.trainer import fit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(share_data(tmp_path / "out", demo_layout.root))
    for name, exc in (("failed", RuntimeError("boom")), ("killed", KeyboardInterrupt())):
        with pytest.raises(type(exc)):
            fit(
                _config(layout, run_name=name),
                [tracking.MlflowTracker(layout), _StopAtEpochStart(exc)],
            )
    client = _client(f"sqlite:///{layout.root / 'mlflow.db'}")
    status = {run.info.run_name: run.info.status for run in _runs(client)}
    assert status == {"failed": "FAILED", "killed": "KILLED"}


# --- a tracking server -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(tmp_path: Path):
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server, url
        except OSError:
            time.sleep(0.5)
    _stop(server)
    raise AssertionError(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()}")


def _stop(server) -> None:
    import signal

    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


class _StopServerAfterEpoch1(Callback):
    """Reads the run back over HTTP after epoch 1, then stops the server."""

    def __init__(self, server, url: str):
        self.server, self.url, self.seen = server, url, None

    def on_epoch_end(self, state, record, result) -> None:
        if record["epoch"] != 1:
            return
        client = _client(self.url)
        run = client.get_run(state.mlflow_run_id)
        self.seen = (dict(run.data.params), _history(client, run.info.run_id, "val/map_50"))
        _stop(self.server)


@pytest.mark.slow
def test_a_tracking_server_over_http_and_stopped_mid_run(
    tmp_path, demo_layout, monkeypatch, caplog
):
    from gunctl.core.trainer import fit

    server, url = _start_server(tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        layout = Layout(share_data(tmp_path / "out", demo_layout.root))
        stopper = _StopServerAfterEpoch1(server, url)
        with caplog.at_level(logging.WARNING, logger="gunctl"):
            result = fit(_config(layout, epochs=2), [tracking.MlflowTracker(layout), stopper])
    finally:
        _stop(server)
    params, history = stopper.seen  # logged over HTTP while the server was up
    assert params["lr"] == "0.001"
    assert history == [(1, pytest.approx(result.history[0]["val"]["map_50"]))]
    assert result.epochs == 2 and result.best_checkpoint.exists()  # training went on
    warnings = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on without tracking" in warnings[0]
    assert not (layout.root / "mlflow.db").exists()  # the server was the store


# --- torchrun --------------------------------------------------------------------------------


@pytest.mark.slow
def test_distributed_training_logs_once(tmp_path, demo_layout):
    out = share_data(tmp_path / "out", demo_layout.root)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = run_gunctl(
        "train", "--nproc", "2", "--mlflow", "--epochs", "1", "--subset", "12", "--out", out,
        "--run-name", "ddp", "--model", TINY_MODEL, "--weights", "none", "--box-head-dim",
        str(TINY_HEAD), "--min-size", "64", "--max-size", "96", "--workers", "0",
        "--batch-size", "2", "--recipe", "plain", "--quiet",
        env={**env, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = _client(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = _runs(client)
    assert run.data.tags["gunctl.world_size"] == "2"
    assert [s for s, _ in _history(client, run.info.run_id, "val/map_50")] == [1]
    assert run.info.status == "FINISHED"
