"""Experiment tracking with MLflow: a training callback, and validation figures for a run.

``MlflowTracker`` is a ``callbacks.Callback``: the trainer gives callbacks to rank 0 only, so
a distributed run logs once. It logs, through MLflow's own client:
  - at the start: every resolved option as a param (the names of the run's ``config.yaml``)
    and tags: the data set's manifest and split hashes, the class names, gunctl / torch /
    torchvision versions and the git commit of gunctl's source when it is a checkout;
  - after each epoch: losses, lr, mAP@0.5, mAP, precision, recall, F1 ... with step = epoch;
  - at the end: ``best.pth`` (slim), ``config.yaml``, ``metrics.json`` (every epoch's
    validation) and the TensorBoard event files (the val images with boxes) as artifacts, and
    the model with MLflow's PyTorch flavour, registered under ``--register NAME`` if asked.
The MLflow run id goes into the checkpoint (``state.mlflow_run_id``): ``--resume`` continues
the same MLflow run and ``gunctl validate --mlflow`` logs to it.

A tracking failure (server down, disk full) is one warning; the tracker then stops logging
and training goes on. A run that fails is marked FAILED, an interrupted one KILLED.

The store: ``MLFLOW_TRACKING_URI`` when set, else an SQLite file under the output root
(``<out>/mlflow.db``, artifacts in ``<out>/mlartifacts``). mlflow is imported inside the
functions (an optional extra; ``gunctl --help`` must not load it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunctl.core.callbacks import Callback
from gunctl.errors import UsageError

if TYPE_CHECKING:
    from gunctl.config import Layout
    from gunctl.core.state import TrainState

log = logging.getLogger("gunctl")

EXTRA_HINT = 'pip install "gunctl[mlflow]"'
DEFAULT_EXPERIMENT = "gunctl"  # MLFLOW_EXPERIMENT_NAME overrides it, as in MLflow itself
DB_NAME = "mlflow.db"  # under the output root, when MLFLOW_TRACKING_URI is not set
ARTIFACTS_NAME = "mlartifacts"  # beside it
# A tracking server that is down must not hold training up for minutes: MLflow's own default
# retries 7 times with a growing backoff. Set only where the user has not set them.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
_RUN_ID_TAG = "gunctl.run_id"  # gunctl's own run id: finds the MLflow run of an old checkpoint


def require_mlflow(what: str = "--mlflow") -> None:
    """UsageError (exit 2) naming the extra to install when MLflow is not importable."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError(f"{what} needs MLflow, an optional extra: {EXTRA_HINT}") from None


def mlflow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def resolve_flag(flag: bool | None) -> bool:
    """--mlflow / --no-mlflow when given, else on when MLFLOW_TRACKING_URI is set. Asked for
    explicitly without the extra: UsageError; on by the variable alone: a warning, and off."""
    on = bool(os.environ.get("MLFLOW_TRACKING_URI")) if flag is None else flag
    if on and flag is None and not mlflow_available():
        log.warning(
            "MLFLOW_TRACKING_URI is set but MLflow is not installed (%s): no tracking", EXTRA_HINT
        )
        return False
    if on:
        require_mlflow()
    return on


def tracking_uri(layout: Layout) -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded SQLite store under the output root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str((Path(layout.root) / DB_NAME).resolve())


def _embedded(layout: Layout) -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def open_client(layout: Layout):
    """An MlflowClient on the store, and the experiment's id (created when missing)."""
    from mlflow.tracking import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(layout)
    if _embedded(layout):
        Path(layout.root).mkdir(parents=True, exist_ok=True)
    for name in ("alembic", "mlflow.store.db.utils"):  # the SQLite store's set-up chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if _embedded(layout):  # artifacts beside the database, not in the working directory
        location = (Path(layout.root) / ARTIFACTS_NAME).resolve().as_uri()
    try:
        return client, client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return client, experiment.experiment_id


def ui_command(layout: Layout, host: str, port: int) -> list[str]:
    """MLflow's own UI server on the store `gunctl train --mlflow` writes to."""
    import sys

    from gunctl.config import check_ints

    check_ints("--port", (port,), 1, 65535)
    command = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)]
    command += ["--backend-store-uri", tracking_uri(layout)]
    if _embedded(layout):
        artifacts = (Path(layout.root) / ARTIFACTS_NAME).resolve().as_uri()
        command += ["--default-artifact-root", artifacts]
    return command


def run_params(config) -> dict[str, str]:
    """Every resolved option under its config.yaml name, as MLflow params (strings)."""
    from gunctl.config import train_options

    return {name: _text(value) for name, value in train_options(config).items()}


def run_tags(state: TrainState) -> dict[str, str]:
    import torch
    import torchvision

    from gunctl import __version__

    tags = {
        "gunctl.run_name": state.run_name,
        _RUN_ID_TAG: state.run_id,
        "gunctl.manifest_hash": state.manifest_checksum or "",
        "gunctl.split_hash": state.split_checksum or "",
        "gunctl.class_names": ",".join(state.class_names),
        "gunctl.weights_origin": state.weights_origin,
        "gunctl.world_size": str(state.world_size),
        "gunctl.version": __version__,
        "torch.version": str(torch.__version__),
        "torchvision.version": str(torchvision.__version__),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit() -> str | None:
    """The commit of gunctl's source when it runs from a git checkout, else None."""
    import gunctl

    root = Path(gunctl.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def epoch_metrics(record: dict) -> dict[str, float]:
    """An epoch's numbers under TensorBoard's names (train/loss, val/map_50, lr ...)."""
    metrics = {"train/lr": record.get("lr")}
    for part in ("train", "val"):
        for key, value in (record.get(part) or {}).items():
            if key != "per_class":
                metrics[f"{part}/{key}"] = value
    for name, values in ((record.get("val") or {}).get("per_class") or {}).items():
        for key in ("map", "map_50"):
            metrics[f"val_per_class/{key}/{_metric_name(name)}"] = values.get(key)
    metrics["perf/epoch_seconds"] = record.get("seconds")
    return {k: float(v) for k, v in metrics.items() if _is_number(v)}


class MlflowTracker(Callback):
    """Logs a training run to MLflow (see the module's docstring). ``parent_run_id``: a
    sweep's run, of which this one is a child; ``extra_tags``: e.g. the sweep's trial;
    ``log_model=False``: no MLflow model (a sweep's trials: best.pth is logged all the same)."""

    def __init__(
        self,
        layout: Layout,
        register: str | None = None,
        parent_run_id: str | None = None,
        extra_tags: dict[str, str] | None = None,
        log_model: bool = True,
    ):
        self.layout, self.register, self.log_model = layout, register, log_model
        self.parent_run_id, self.extra_tags = parent_run_id, dict(extra_tags or {})
        self.client = None
        self.run_id: str | None = None
        self.broken = False  # after the first failure: one warning, then nothing more

    # --- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, state) -> None:
        self._safe("starting the run", self._start, state)

    def on_epoch_end(self, state, record, result) -> None:
        self._safe("logging an epoch", self._log_epoch, record)

    def on_fit_end(self, state) -> None:
        logged = self._safe("logging the artifacts", self._log_artifacts, state) is not False
        if logged and self.log_model:
            self._safe("logging the model", self._log_model, state)
        self._safe("ending the run", self._end, "FINISHED")

    def on_exception(self, state, exc, resumable) -> None:
        pruned = type(exc).__name__ == "TrialPruned"  # optuna's: a sweep stopped a poor trial
        if pruned:
            self._safe("tagging the run", self._tag, {"gunctl.sweep.state": "pruned"})
        killed = isinstance(exc, KeyboardInterrupt) or pruned
        self._safe("ending the run", self._end, "KILLED" if killed else "FAILED")

    # --- the work ---------------------------------------------------------------------------

    def _safe(self, doing: str, action, *args):
        if self.broken or (self.run_id is None and action != self._start):
            return False
        try:
            action(*args)
        except Exception as exc:  # any failure of tracking: one warning, training goes on
            from gunctl.errors import first_line

            self.broken = True
            log.warning(
                "MLflow: %s failed (%s); training goes on without tracking", doing, first_line(exc)
            )
            return False
        return None

    def _start(self, state: TrainState) -> None:
        from mlflow.entities import Param, RunTag

        self.client, experiment_id = open_client(self.layout)
        self.run_id = self._continued_run(state)
        logged: dict[str, str] = {}
        tags = {**run_tags(state), **self.extra_tags}
        if self.run_id is None:
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = self.client.create_run(experiment_id, run_name=state.run_name, tags=tags)
            self.run_id = run.info.run_id
        else:
            run = self.client.get_run(self.run_id)
            logged = dict(run.data.params)
            self.client.update_run(self.run_id, status="RUNNING")
            tags["gunctl.resumed_from"] = str(state.resumed_from)
        state.mlflow_run_id = self.run_id
        params, changed = [], {}
        for name, value in run_params(state.config).items():
            if name not in logged:
                params.append(Param(name, value))
            elif logged[name] != value:  # MLflow params never change: the new value is a tag
                changed[f"gunctl.resumed.{name}"] = value
        tags.update(changed)
        self.client.log_batch(
            self.run_id, params=params, tags=[RunTag(k, v) for k, v in tags.items()]
        )
        log.info("MLflow run %s in %s", self.run_id, _shown_uri(self.layout))

    def _continued_run(self, state: TrainState) -> str | None:
        """The MLflow run a resumed checkpoint logged to, when this store has it."""
        stored = getattr(state, "mlflow_run_id", None)
        if not state.resumed_from or not stored:
            return None
        try:
            run = self.client.get_run(stored)
        except Exception:
            log.warning(
                "MLflow: the checkpoint's run %s is not in %s; logging to a new run",
                stored,
                _shown_uri(self.layout),
            )
            return None
        return None if run.info.lifecycle_stage == "deleted" else stored

    def _log_epoch(self, record: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["epoch"])
        metrics = [Metric(k, v, now, step) for k, v in epoch_metrics(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _log_artifacts(self, state: TrainState) -> None:
        import tempfile

        run_dir = Path(state.run_dir)
        if state.best_path.exists():
            self.client.log_artifact(self.run_id, str(state.best_path), "checkpoint")
        config = state.config.layout.run_config(state.run_name)
        if config.exists():
            self.client.log_artifact(self.run_id, str(config))
        for events in sorted(run_dir.glob("events.out.tfevents.*")):
            self.client.log_artifact(self.run_id, str(events), "tensorboard")
        summary = {
            "run_name": state.run_name,
            "best_epoch": state.best_epoch,
            "best_map_50": state.best_metric,
            "history": state.history,
        }
        with tempfile.TemporaryDirectory(prefix="gunctl-mlflow-") as scratch:
            path = Path(scratch) / "metrics.json"
            path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
            self.client.log_artifact(self.run_id, str(path))

    def _log_model(self, state: TrainState) -> None:
        import copy

        import mlflow
        import mlflow.pytorch
        import torch
        import torchvision

        model = copy.deepcopy(state.eval_model).to("cpu").eval()
        requirements = [f"torch=={torch.__version__}", f"torchvision=={torchvision.__version__}"]
        uri = tracking_uri(self.layout)
        with _quiet_mlflow(), _fluent_uri(uri), mlflow.start_run(run_id=self.run_id, nested=True):
            mlflow.pytorch.log_model(
                model,
                registered_model_name=self.register,
                pip_requirements=requirements,  # inferring them would load the model again
                **_model_kwargs(mlflow.pytorch.log_model),
            )

    def _tag(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def _end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def log_validation(layout: Layout, checkpoint_path: Path, report: dict) -> str:
    """Log ``gunctl validate``'s figures to the MLflow run that produced the checkpoint (its
    stored run id, else its gunctl run id's tag), else to a new run. Returns the run id."""
    from mlflow.entities import Metric, Param, RunTag

    from gunctl.core.checkpoint import load_checkpoint

    stored = load_checkpoint(checkpoint_path, mmap=True)
    client, experiment_id = open_client(layout)
    run_id = _find_run(client, experiment_id, stored)
    step = int(stored.get("epoch") or 0)
    if run_id is None:
        name = f"validate {stored.get('run_name') or Path(checkpoint_path).stem}"
        tags = {"gunctl.checkpoint": str(checkpoint_path), "gunctl.command": "validate"}
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        params = [Param("checkpoint", str(checkpoint_path)), Param("data", str(report["data"]))]
        client.log_batch(run_id, params=params)
        created = True
    else:
        created = False
    now = int(time.time() * 1000)
    figures = {f"validate/{k}": v for k, v in (report.get("metrics") or {}).items()}
    figures.update({f"validate_tta/{k}": v for k, v in (report.get("tta") or {}).items()})
    metrics = [Metric(k, float(v), now, step) for k, v in figures.items() if _is_number(v)]
    tags = [RunTag("gunctl.validate.data", str(report.get("data")))]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gunctl-mlflow-") as scratch:
        path = Path(scratch) / f"validate-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        client.log_artifact(run_id, str(path), "validate")
    if created:
        client.set_terminated(run_id, status="FINISHED")
    return run_id


def _find_run(client, experiment_id: str, checkpoint: dict) -> str | None:
    stored = checkpoint.get("mlflow_run_id")
    if isinstance(stored, str) and stored:
        try:
            if client.get_run(stored).info.lifecycle_stage != "deleted":
                return stored
        except Exception:
            log.warning("MLflow: the checkpoint's run %s is not in this store", stored)
    gunctl_run = checkpoint.get("run_id")
    if isinstance(gunctl_run, str) and gunctl_run.isalnum():
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{_RUN_ID_TAG}` = '{gunctl_run}'", max_results=1
        )
        if found:
            return found[0].info.run_id
    return None


def _shown_uri(layout: Layout) -> str:
    return tracking_uri(layout) if not _embedded(layout) else str(Path(layout.root) / DB_NAME)


def _model_kwargs(log_model) -> dict[str, str]:
    """The model's name, and its format, as this MLflow version takes them: MLflow 3 names
    a model with ``name`` (2.x: ``artifact_path``); where MLflow defaults to "pt2"
    (torch.export, which needs an input example and does not take a detector's control
    flow), pickle is asked for: loading it needs MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true
    (best.pth is the plain-data copy)."""
    import inspect

    parameters = inspect.signature(log_model).parameters
    kwargs = {"name" if "name" in parameters else "artifact_path": "model"}
    if "serialization_format" in parameters:
        kwargs["serialization_format"] = "pickle"
    return kwargs


@contextlib.contextmanager
def _fluent_uri(uri: str):
    """MLflow's fluent API (mlflow.pytorch.log_model) on ``uri``; mlflow.set_tracking_uri also
    sets MLFLOW_TRACKING_URI in the environment, which is put back as it was."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


class _quiet_mlflow:
    """MLflow's own INFO/WARNING chatter while logging the model (it is summarised by us)."""

    def __enter__(self):
        self.logger = logging.getLogger("mlflow")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _metric_name(name: str) -> str:
    """A class name as part of a metric key (MLflow allows letters, digits, _ - . / and space)."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in name)[:200] or "_"


def _is_number(value: Any) -> bool:
    import math

    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
