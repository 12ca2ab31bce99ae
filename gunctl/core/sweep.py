"""Hyper-parameter sweeps on Optuna: each trial an ordinary training run (``trainer.fit``).

A space file (YAML) names `gunctl train` options under their ``config.yaml`` names:

    fixed:                    # every trial (optional)
      model: fasterrcnn_resnet18_fpn
      epochs: 6
    params:                   # what Optuna searches
      lr: {low: 1.0e-5, high: 1.0e-2, log: true}
      weight_decay: {low: 0.0, high: 1.0e-3}
      min_size: {low: 160, high: 320, step: 32}
      optimizer: {choices: [adam, adamw, sgd]}
    enqueue:                  # trials to run first (optional): e.g. the recipe's values
      - {lr: 3.0e-4}

Each trial trains under ``<out>/runs/<study>-<number>`` with its own ``config.yaml`` (and an
MLflow child run with ``--mlflow``); its val mAP@0.5 is reported to Optuna after each
validated epoch, and the pruner (median, after ``--warmup-epochs``) stops poor trials by
raising ``optuna.TrialPruned`` from a training callback. A trial whose loss diverges is
pruned too (its value would say nothing). The trial's value is its best val mAP@0.5.

The study lives in Optuna's own storage: an RDB URL (default: SQLite,
``<out>/sweeps/optuna.db``) or ``journal:FILE`` (Optuna's journal file, for processes on
one machine or a shared file system). Several processes with the same storage and study
share the work: ``--trials N`` counts the study's trials in all, and a trial number past N
(two processes asking at once) is dropped before it trains. ``--resume`` also reruns, as
new trials with the same options, the trials that a killed or interrupted process left.

optuna is imported inside the functions (an optional extra; ``gunctl --help`` stays fast).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunctl.core.callbacks import Callback
from gunctl.errors import DivergedError, TrainingError, UsageError

if TYPE_CHECKING:
    from gunctl.config import Layout, SweepConfig, TrainConfig

log = logging.getLogger("gunctl")

EXTRA_HINT = 'pip install "gunctl[sweep]"'
METRIC = "map_50"  # what a trial reports each epoch and returns: val mAP@0.5, maximised
SWEEPS_DIR = "sweeps"  # under the output root: the default storage and best.yaml
DEFAULT_DB = "optuna.db"
# The config.yaml names of the model's options, and their ModelConfig fields.
MODEL_OPTIONS = {
    "model": "name",
    "weights": "weights",
    "min_size": "min_size",
    "max_size": "max_size",
    "norm": "norm",
    "multiscale": "train_sizes",
    "fpn_levels": "fpn_levels",
    "fpn_channels": "fpn_channels",
    "box_head_dim": "box_head_dim",
}
_COUNTED_FAILURE = "error"  # a trial that failed for itself (not killed, not surplus) counts


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UsageError(f"gunctl sweep needs Optuna, an optional extra: {EXTRA_HINT}") from None


# --- the space ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Space:
    params: dict[str, dict[str, Any]]  # option -> {low, high, log, step} or {choices}
    fixed: dict[str, Any] = field(default_factory=dict)
    enqueue: list[dict[str, Any]] = field(default_factory=list)


def option_names() -> list[str]:
    """What a space (and best.yaml) may name: the options of a run's config.yaml."""
    from gunctl.config import TrainConfig, train_options

    return [*train_options(TrainConfig()), "epochs"]


def load_space(path: Path) -> Space:
    """Read and check a space file; every problem is one UsageError naming the file."""
    return _space_from(_read_yaml(path), str(path))


def _read_yaml(path: Path) -> Any:
    import yaml

    from gunctl.core.fileio import MAX_CONFIG_BYTES, load_yaml

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the space file ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"{path}: not a space file (over {MAX_CONFIG_BYTES} bytes)")
    try:
        return load_yaml(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None


def _space_from(data: Any, where: str) -> Space:
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or not data["params"]:
        raise UsageError(f"{where}: a space file needs `params:` (options to search)")
    unknown = set(data) - {"params", "fixed", "enqueue"}
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    names = option_names()
    fixed = {_name(k, names, where): v for k, v in (data.get("fixed") or {}).items()}
    params = {}
    for key, spec in data["params"].items():
        params[_name(key, names, where)] = _param_spec(spec, f"{where}: params.{key}")
    both = set(fixed) & set(params)
    if both:
        raise UsageError(f"{where}: {', '.join(sorted(both))} both fixed and searched")
    enqueue = data.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise UsageError(f"{where}: `enqueue:` is a list of {{option: value}} mappings")
    enqueue = [{_name(k, list(params), where): v for k, v in e.items()} for e in enqueue]
    return Space(params=params, fixed=fixed, enqueue=enqueue)


def _name(key: Any, names: list[str], where: str) -> str:
    import difflib

    name = str(key).replace("-", "_")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{where}: unknown option {key!r}{hint}")
    return name


def _param_spec(spec: Any, where: str) -> dict[str, Any]:
    """{choices: [...]} or {low, high, log?, step?} with numbers (whole numbers: an int range)."""
    if not isinstance(spec, dict):
        raise UsageError(f"{where}: give {{low: , high: }} or {{choices: [...]}}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: choices is a non-empty list, alone")
        if not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise UsageError(f"{where}: choices are plain values (text, numbers, true/false)")
        return {"choices": choices}
    extra = set(spec) - {"low", "high", "log", "step"}
    if extra or "low" not in spec or "high" not in spec:
        raise UsageError(f"{where}: a range is {{low, high}} with optional log and step")
    low, high, step = spec["low"], spec["high"], spec.get("step")
    values = [v for v in (low, high, step) if v is not None]
    if not all(_is_number(v) for v in values):
        raise UsageError(f"{where}: low, high and step are numbers")
    if not low < high:
        raise UsageError(f"{where}: low {low} is not below high {high}")
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool) or (log_scale and low <= 0):
        raise UsageError(f"{where}: log is true or false, and a log range starts above 0")
    if step is not None and (step <= 0 or log_scale):
        raise UsageError(f"{where}: step is above 0, and not with log")
    whole = all(isinstance(v, int) for v in values)
    return {"low": low, "high": high, "log": log_scale, "step": step, "int": whole}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- options -> a training config ------------------------------------------------------------


def trial_config(
    options: dict[str, Any], layout: Layout, run_name: str, mlflow: bool = False
) -> TrainConfig:
    """A TrainConfig from `gunctl train` options under their config.yaml names; the options
    given count as set by the user (the recipe keeps them), as on the command line."""
    from gunctl.config import ModelConfig, TrainConfig

    model, train, explicit = {}, {}, []
    for name, value in options.items():
        if name in MODEL_OPTIONS:
            key = MODEL_OPTIONS[name]
            model[key] = _sizes(name, value) if key in ("train_sizes", "fpn_levels") else value
            explicit.append(f"model.{key}")
        else:
            train[name] = value
            explicit.append(name)
    try:
        config = TrainConfig(
            model=ModelConfig(**model),
            layout=layout,
            run_name=run_name,
            explicit=tuple(explicit),
            mlflow=mlflow,
            **train,
        )
    except TypeError as exc:
        raise UsageError(f"options {sorted(options)}: {exc}") from None
    config.check(relations=False)
    return config


def _sizes(name: str, value: Any) -> tuple[int, ...]:
    """multiscale / fpn_levels as config.yaml writes them: "192,224", "off", "all" or a list."""
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    else:
        text = str(value).strip().lower()
        parts = [] if text in ("off", "all", "none", "") else text.split(",")
    try:
        sizes = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: whole numbers separated by commas, got {value!r}") from None
    return tuple(sorted(set(sizes))) if name == "fpn_levels" else sizes


# --- storage and study -----------------------------------------------------------------------


def storage_url(config: SweepConfig) -> str:
    if config.storage:
        return config.storage
    path = (Path(config.layout.root) / SWEEPS_DIR / DEFAULT_DB).resolve()
    return f"sqlite:///{path}"


def open_storage(url: str):
    """Optuna's own storage for ``url``: journal:FILE, or an RDB URL (SQLite, PostgreSQL ...)."""
    import optuna

    if url.startswith("journal:"):
        try:
            from optuna.storages.journal import JournalFileBackend, JournalStorage
        except ImportError:  # Optuna 3.x names
            from optuna.storages import JournalFileStorage as JournalFileBackend
            from optuna.storages import JournalStorage

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        # The heartbeat marks the trials of a machine that died as failed (after the grace
        # period) and enqueues each once again, for whichever process asks next.
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            heartbeat_interval=60,
            grace_period=300,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )
    except Exception as exc:  # a bad URL, a missing driver, a server that refuses
        from gunctl.errors import first_line

        raise UsageError(f"--storage {url}: cannot open ({first_line(exc)})") from None


def study_name(config: SweepConfig) -> str:
    if config.study:
        return config.study
    if config.space is not None:
        return Path(config.space).stem
    raise UsageError("--study NAME is needed with --show and no --space")


def _pruner(config: SweepConfig):
    import optuna

    if config.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=config.startup_trials, n_warmup_steps=config.warmup_epochs
    )


# --- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialSummary:
    number: int
    state: str  # complete, pruned, failed
    value: float | None
    params: dict[str, Any]
    run_name: str | None
    note: str = ""  # why it was pruned or failed


@dataclass(frozen=True)
class SweepResult:
    study: str
    storage: str
    trials: list[TrialSummary]  # every counted trial of the study, by number
    ran: list[int]  # the trial numbers this process trained
    best: TrialSummary | None


class _Surplus(Exception):
    """A trial numbered past --trials (another process asked at the same time)."""


class PruningReporter(Callback):
    """Reports each validated epoch's mAP@0.5 to Optuna; raises TrialPruned when the pruner
    says so (the trainer saves a resumable checkpoint and re-raises it)."""

    def __init__(self, trial):
        self.trial = trial

    def on_epoch_end(self, state, record, result) -> None:
        import optuna

        value = (record.get("val") or {}).get(METRIC)
        if result is None or value is None:
            return
        self.trial.report(float(value), int(record["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}: val mAP@0.5 {value:.4f}")


def run_sweep(
    config: SweepConfig,
    make_callbacks: Callable[[], list] = list,
    on_trial: Callable[[TrialSummary, SweepResult], None] | None = None,
) -> SweepResult:
    """Run trials until the study has ``config.trials``. ``make_callbacks()``: the caller's
    training callbacks for each trial (a progress display); ``on_trial``: after each trial."""
    import optuna

    config.check()
    space = load_space(config.space)
    name, url = study_name(config), storage_url(config)
    _check_options(space, config)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by us
    storage = open_storage(url)
    study = _open_study(config, name, storage, space)
    if config.resume:
        _requeue_left_trials(study)
    parent = _mlflow_parent(config, study) if config.mlflow else None
    ran: list[int] = []

    def objective(trial) -> float:
        return _objective(trial, config, space, name, parent, make_callbacks, ran)

    while _counted(study) < config.trials:
        before = len(ran)
        try:
            study.optimize(objective, n_trials=1, catch=(TrainingError, UsageError))
        except _Surplus:
            break
        if on_trial is not None and len(ran) > before:
            summary = _summary(study.trials[ran[-1]])
            on_trial(summary, _result(study, name, url, ran))
    if parent is not None:
        _end_parent(config, study, parent)
    return _result(study, name, url, ran)


def _end_parent(config: SweepConfig, study, parent: str) -> None:
    """The study's MLflow run ends when its last trial has (whichever process sees it)."""
    from optuna.trial import TrialState

    if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        return
    try:
        from gunctl.core.tracking import open_client

        client, _ = open_client(config.layout)
        client.set_terminated(parent, status="FINISHED")
    except Exception as exc:  # tracking never stops the sweep
        from gunctl.errors import first_line

        log.warning("MLflow: ending the sweep's run failed (%s)", first_line(exc))


def _check_options(space: Space, config: SweepConfig) -> None:
    """The fixed options, and each searched value's ends (or choices) with them, pass the
    training rules before any trial trains (each value alone: min_size and max_size may
    only clash in some pairs, which fail as trials)."""
    trial_config(_options(space.fixed, {}, config), config.layout, "check")
    for name, spec in space.params.items():
        for value in spec["choices"] if "choices" in spec else (spec["low"], spec["high"]):
            trial_config(_options(space.fixed, {name: value}, config), config.layout, "check")


def _options(fixed: dict, params: dict, config: SweepConfig) -> dict[str, Any]:
    options = {**fixed, **params}
    if config.minutes is not None:  # each trial's budget; the epochs follow from it
        options["minutes"] = config.minutes
        options.pop("epochs", None)
    return options


def _open_study(config: SweepConfig, name: str, storage, space: Space):
    import optuna

    sampler = optuna.samplers.TPESampler(seed=config.seed)
    try:
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=sampler, pruner=_pruner(config)
        )
    except KeyError:
        study = None
    if study is None:
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=_pruner(config),
                direction="maximize",
                load_if_exists=True,  # another process created it meanwhile
            )
        except Exception as exc:
            from gunctl.errors import first_line

            raise UsageError(f"study {name}: cannot create ({first_line(exc)})") from None
        if not study.user_attrs.get("enqueued"):
            study.set_user_attr("enqueued", True)
            for params in space.enqueue:
                study.enqueue_trial(params, skip_if_exists=True)
    elif study.trials and not config.resume:
        log.info("study %s has %d trial(s): this process joins it", name, len(study.trials))
    return study


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive_here(attrs: dict) -> bool:
    """Whether the process that owns a trial is alive (only known for this machine)."""
    if attrs.get("host") != socket.gethostname() or not isinstance(attrs.get("pid"), int):
        return True  # another machine's: the storage's heartbeat tells
    try:
        os.kill(attrs["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue_left_trials(study) -> None:
    """--resume: the trials that a killed process left running, or that an interrupt
    stopped, are marked failed and enqueued again with their options (once each)."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for trial in study.trials:
        left = trial.state == TrialState.RUNNING and not _alive_here(trial.user_attrs)
        interrupted = (
            trial.state == TrialState.FAIL and trial.user_attrs.get("failure") == "interrupted"
        )
        if not (left or interrupted) or trial.number in retried:
            continue
        if left:
            storage = study._storage  # a trial whose process is gone: only its state changes
            storage.set_trial_user_attr(trial._trial_id, "failure", "killed")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log.warning(
            "trial %d was %s: running its options again",
            trial.number,
            "killed" if left else "interrupted",
        )


def _counted(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))


def _counts(trial) -> bool:
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return trial.user_attrs.get("failure") is None
    return trial.state == TrialState.FAIL and trial.user_attrs.get("failure") == _COUNTED_FAILURE


def _objective(trial, config, space, name, parent, make_callbacks, ran) -> float:
    import optuna

    from gunctl.core.trainer import fit

    for key, value in _owner().items():
        trial.set_user_attr(key, value)
    earlier = [
        t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number and _counts(t)
    ]
    if len(earlier) >= config.trials:
        trial.set_user_attr("failure", "surplus")
        raise _Surplus
    params = {key: _suggest(trial, key, spec) for key, spec in space.params.items()}
    run_name = f"{name}-{trial.number:03d}"
    trial.set_user_attr("run_name", run_name)
    train = trial_config(_options(space.fixed, params, config), config.layout, run_name)
    callbacks = []
    if parent is not None:
        from gunctl.core.tracking import MlflowTracker

        tags = {"gunctl.sweep.study": name, "gunctl.sweep.trial": str(trial.number)}
        callbacks.append(
            MlflowTracker(config.layout, parent_run_id=parent, extra_tags=tags, log_model=False)
        )
    # the display before the reporter: a pruned trial's last epoch is shown, then it stops
    callbacks += [*make_callbacks(), PruningReporter(trial)]
    ran.append(trial.number)
    log.info("trial %d: %s", trial.number, _shown(params))
    try:
        result = fit(dataclasses.replace(train, mlflow=parent is not None), callbacks)
    except optuna.TrialPruned:
        raise
    except DivergedError as exc:
        trial.set_user_attr("note", f"diverged: {exc}"[:500])
        raise optuna.TrialPruned(f"diverged ({exc})") from None
    except KeyboardInterrupt:
        trial.set_user_attr("failure", "interrupted")
        raise
    except (TrainingError, UsageError) as exc:
        trial.set_user_attr("failure", _COUNTED_FAILURE)
        trial.set_user_attr("note", str(exc)[:500])
        raise
    if result.best_metric is None:
        trial.set_user_attr("failure", _COUNTED_FAILURE)
        raise TrainingError(f"trial {trial.number}: no val mAP@0.5 (no validated epoch)")
    return float(result.best_metric)


def _suggest(trial, name: str, spec: dict[str, Any]):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if spec["int"]:
        return trial.suggest_int(
            name, spec["low"], spec["high"], step=spec["step"] or 1, log=spec["log"]
        )
    return trial.suggest_float(
        name, float(spec["low"]), float(spec["high"]), step=spec["step"], log=spec["log"]
    )


def _mlflow_parent(config: SweepConfig, study) -> str | None:
    """The study's MLflow run (created by the first process; its id kept in the study)."""
    from gunctl.core.tracking import open_client

    existing = study.user_attrs.get("mlflow_parent_run_id")
    if existing:
        return existing
    try:
        client, experiment_id = open_client(config.layout)
        tags = {"gunctl.sweep.study": study.study_name}
        run = client.create_run(experiment_id, run_name=f"sweep {study.study_name}", tags=tags)
    except Exception as exc:
        from gunctl.errors import first_line

        log.warning(
            "MLflow: creating the sweep's run failed (%s); trials log alone", first_line(exc)
        )
        return None
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def _shown(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in params.items())


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _summary(trial) -> TrialSummary:
    from optuna.trial import TrialState

    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}
    state = states.get(trial.state, trial.state.name.lower())
    note = trial.user_attrs.get("note", "")
    if trial.state == TrialState.PRUNED and not note:
        steps = trial.intermediate_values
        if steps:
            last = max(steps)
            note = f"pruned after epoch {last}: val mAP@0.5 {steps[last]:.4f}"
    value = trial.value if trial.state == TrialState.COMPLETE else None
    if value is None and trial.intermediate_values:
        value = max(trial.intermediate_values.values())
    return TrialSummary(
        number=trial.number,
        state=state,
        value=value,
        params=dict(trial.params),
        run_name=trial.user_attrs.get("run_name"),
        note=note,
    )


def _result(study, name: str, url: str, ran: list[int]) -> SweepResult:
    from optuna.trial import TrialState

    trials = [_summary(t) for t in study.get_trials(deepcopy=False) if _counts(t)]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = _summary(max(complete, key=lambda t: t.value)) if complete else None
    return SweepResult(study=name, storage=url, trials=trials, ran=list(ran), best=best)


# --- --show ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShowResult:
    result: SweepResult
    importances: dict[str, float]  # empty when Optuna cannot tell (too few trials)
    best_yaml: Path | None


def show(config: SweepConfig) -> ShowResult:
    """The study's trials and best trial, the parameters' importances, and ``best.yaml``:
    the best trial's options, which `gunctl train --config best.yaml` trains again."""
    import optuna

    config.check()
    name, url = study_name(config), storage_url(config)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by us
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise UsageError(f"no study storage at {url.removeprefix('sqlite:///')}: run a sweep first")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise UsageError(f"no study named {name} in {url}") from None
    result = _result(study, name, url, [])
    importances: dict[str, float] = {}
    try:
        importances = dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:
        log.info("no parameter importances yet (%s)", exc)
    path = None
    if result.best is not None:
        path = _write_best(config, study, result.best)
    return ShowResult(result, importances, path)


def _write_best(config: SweepConfig, study, best: TrialSummary) -> Path:
    """best.yaml: the best trial's resolved options (its config.yaml), else fixed + params."""
    import yaml

    from gunctl.core.fileio import write_bytes_atomic

    run_config = config.layout.run_config(best.run_name) if best.run_name else None
    header = (
        f"# study {study.study_name}, trial {best.number}: val mAP@0.5 {best.value:.4f}\n"
        "# gunctl train --config this-file trains it again (add --run-name NEW)\n"
    )
    if run_config is not None and run_config.is_file():
        lines = run_config.read_text().splitlines(keepends=True)
        body = "".join(line for line in lines if not line.startswith("#"))
    else:
        body = yaml.safe_dump(best.params, sort_keys=False)
    path = Path(config.layout.root) / SWEEPS_DIR / study.study_name / "best.yaml"
    write_bytes_atomic(path, (header + body).encode())
    return path
