"""Every option is declared once (gunctl/config.py with gunctl/rules.py), and every front end
gets the same one-line error for a value outside its rule: the command line, a caller of the
core that is not the CLI, and a checkpoint's stored config."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest

from gunctl.config import (
    ModelConfig,
    PredictConfig,
    TrainConfig,
    ValidateConfig,
)
from gunctl.errors import UsageError
from gunctl.rules import Rule, options

ROOT = Path(__file__).resolve().parents[1]

# Declared options that are not options of that command (set by the recipe or the model).
NOT_ON_THE_COMMAND_LINE = {"anchor sizes", "aspect ratios", "classes (with the background)"}


def bad_value(rule: Rule):
    """A value outside ``rule``, known from the rule's declaration alone."""
    if rule.kind == "choice":
        return "no-such-choice"
    if rule.kind == "device":
        return "gpu7"
    if rule.kind in ("whole", "wholes"):
        value = int(rule.high) + 1 if math.isfinite(rule.high) else int(rule.low) - 1
        return (value,) if rule.kind == "wholes" else value
    if rule.kind in ("number", "numbers"):
        value = rule.high * 2 + 1 if math.isfinite(rule.high) else rule.low - 1
        return float(value) if rule.kind == "number" else (float(value),)
    return None  # flags and texts: the command line cannot type a wrong one


def cases(cls, nested: str | None = None):
    for name, option in options(cls).items():
        value = bad_value(option.rule) if option.rule else None
        if value is None or not option.flag.startswith("--"):
            continue
        if option.flag in NOT_ON_THE_COMMAND_LINE:
            continue
        yield pytest.param(nested, name, option.flag, value, id=option.flag)


def typed(flag: str, value) -> str:
    """As typed on the command line (a comma list for lists)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def core_error(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


def cli_error(gunctl, *args) -> str:
    ran = gunctl(*args)
    assert ran.exit_code == 2, ran.output
    lines = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in ran.output, ran.output
    return lines[0].removeprefix("error: ")


TRAIN_CASES = [*cases(TrainConfig), *cases(ModelConfig, "model")]


@pytest.mark.parametrize(("nested", "name", "flag", "value"), TRAIN_CASES)
def test_train_options_same_error_from_the_core_and_the_cli(
    gunctl, tmp_path, nested, name, flag, value
):
    from gunctl.core.trainer import fit

    layout_args = ("--out", str(tmp_path / "art"))
    if nested:
        config = TrainConfig(model=dataclasses.replace(ModelConfig(), **{name: value}))
    else:
        config = TrainConfig(**{name: value})
    from_core = core_error(lambda: fit(config))
    from_cli = cli_error(gunctl, "train", flag, typed(flag, value), *layout_args)
    assert from_cli == from_core
    assert flag in from_core and "\n" not in from_core
    assert not (tmp_path / "art").exists()  # refused before anything is written


@pytest.mark.parametrize(("nested", "name", "flag", "value"), list(cases(ValidateConfig)))
def test_validate_options_same_error_from_the_core_and_the_cli(
    gunctl, tmp_path, nested, name, flag, value
):
    from gunctl.core.validate import validate_checkpoint

    checkpoint = tmp_path / "missing.pth"  # the option fails before the file is read
    config = ValidateConfig(checkpoint=checkpoint, **{name: value})
    from_core = core_error(lambda: validate_checkpoint(config))
    from_cli = cli_error(gunctl, "validate", str(checkpoint), flag, typed(flag, value))
    assert from_cli == from_core and flag in from_core


@pytest.mark.parametrize(("nested", "name", "flag", "value"), list(cases(PredictConfig)))
def test_predict_options_same_error_from_the_core_and_the_cli(
    gunctl, tmp_path, nested, name, flag, value
):
    from gunctl.core.predict import predict

    source, checkpoint = tmp_path / "x.jpg", tmp_path / "missing.pth"
    out = tmp_path / "out"
    config = PredictConfig(sources=(str(source),), checkpoint=checkpoint, out=out, **{name: value})
    from_core = core_error(lambda: predict(config))
    from_cli = cli_error(
        gunctl, "predict", str(source), "--weights", str(checkpoint), "--out", str(out),
        flag, typed(flag, value),
    )  # fmt: skip
    assert from_cli == from_core and flag in from_core
    assert not out.exists()


def test_a_stored_config_breaking_a_rule_names_the_file_and_the_option(tmp_path):
    """The checkpoint reader applies the same declarations (no second range table)."""
    import torch

    from gunctl.core.checkpoint import load_checkpoint
    from gunctl.errors import CheckpointError

    path = tmp_path / "c.pth"
    config = {"lr": 1e-4, "zoom_out": 7.0, "model": {"name": "fasterrcnn_resnet18_fpn"}}
    payload = {"format": "gunctl-checkpoint", "schema": 1, "model": {}, "config": config}
    torch.save({**payload, "epoch": 1, "class_names": ["background", "gun"]}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    expected = f"{path}: config.zoom_out: --zoom-out: a number from 0 to 1, got 7.0"
    assert str(caught.value) == expected


def test_no_range_is_declared_twice():
    """The command line's Typer options carry no min=/max=; checkpoint.py has no range table;
    and within config.py no flag is both declared with opt() and checked by hand."""
    for path in sorted((ROOT / "gunctl" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("Option",):
                keywords = {k.arg for k in node.keywords}
                assert not keywords & {"min", "max", "clamp"}, f"{path.name}: a range in Typer"
    checkpoint = (ROOT / "gunctl" / "core" / "checkpoint.py").read_text()
    assert "_RANGES" not in checkpoint
    tree = ast.parse((ROOT / "gunctl" / "config.py").read_text())
    declared, by_hand = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        first = [a.value for a in node.args[:2] if isinstance(a, ast.Constant)]
        if node.func.id == "opt" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            declared.add((_owner(tree, node), node.args[1].value))
        elif node.func.id.startswith("check_") and first and isinstance(first[0], str):
            by_hand.add((_owner(tree, node), first[0]))
    assert not declared & by_hand, f"declared and checked by hand: {declared & by_hand}"


def _owner(tree: ast.Module, target: ast.AST) -> str:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(n is target for n in ast.walk(node)):
            return node.name
    return ""
