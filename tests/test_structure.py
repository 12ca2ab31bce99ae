"""The package's shape: the CLI loads without torch, and gunctl/ has no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gunctl"


HEAVY = ("torch", "torchvision", "tensorboard", "torchmetrics", "onnx", "onnxruntime", "av")


def test_importing_the_cli_loads_no_torch():
    code = (
        "import sys, gunctl.cli\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every gunctl module that ``path`` imports, at the top, in functions or for type checks."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        target = next((n for n in names if n in modules), None)
        if target:
            found.add(target)
    return found


def test_no_import_circle_inside_the_package():
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {t for t in _imports(path, set(paths)) if t != name and not name.startswith(t + ".")}
        for name, path in paths.items()
    }
    circles = []

    def visit(name: str, trail: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in trail:
                circles.append([*trail[trail.index(target) :], target])
            elif target not in seen:
                visit(target, [*trail, target])
        seen.add(name)

    seen: set[str] = set()
    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])
    assert circles == []
    assert "gunctl.core.state" in graph["gunctl.core.callbacks"]  # callbacks import state...
    assert "gunctl.core.trainer" not in graph["gunctl.core.callbacks"]  # ...not the loop


# --- layers: cli -> core -> (config, errors, rules); inside the core, entry points -> blocks ---
# The core's entry points: what a command (or the service, the watcher, a sweep) calls. The rest
# of the core are building blocks, which never import an entry point.
ENTRY_POINTS = ("ingest", "split", "trainer", "run_setup", "predict", "predict_dist")
ENTRY_POINTS += ("validate", "export")
ENTRY_POINTS += ("sweep", "serve", "watch")
LAYER_RULES = [
    # (modules under this prefix, may not import these, why)
    ("gunctl.core", ("typer", "rich", "click", "gunctl.cli"), "the core knows no terminal"),
    ("gunctl.config", ("gunctl.core", "gunctl.cli"), "declarations are the bottom layer"),
    ("gunctl.rules", ("gunctl.core", "gunctl.cli"), "declarations are the bottom layer"),
    ("gunctl.errors", ("gunctl.core", "gunctl.cli", "gunctl.config"), "errors are the bottom"),
]


def _imported(source: str) -> set[str]:
    """Every module ``source`` imports, anywhere in it (top, functions, TYPE_CHECKING blocks),
    as ``a.b`` and, for ``from a.b import c``, also ``a.b.c``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer_violations(sources: dict[str, str]) -> list[str]:
    """``module imports target (why)`` for every import that goes up a layer, once each."""
    entry = tuple(f"gunctl.core.{name}" for name in ENTRY_POINTS)
    below_ingest = ("gunctl.core.ingest", "gunctl.core.split")
    rules = [
        *LAYER_RULES,
        ("gunctl.core.formats", below_ingest, "readers and writers are below ingest and split"),
        ("gunctl.core.manifest", below_ingest, "the manifest is below ingest and split"),
    ]
    found = {}
    for module, source in sources.items():
        for target in _imported(source):
            for prefix, banned, why in rules:
                if _under(module, prefix) and any(_under(target, b) for b in banned):
                    found.setdefault((module, target), why)
            block = _under(module, "gunctl.core") and not any(_under(module, e) for e in entry)
            if block and any(_under(target, e) for e in entry):
                found.setdefault((module, target), "a building block imports an entry point")
    return [f"{module} imports {target} ({why})" for (module, target), why in sorted(found.items())]


def test_no_import_goes_up_a_layer():
    sources = {_module(path): path.read_text() for path in PACKAGE.rglob("*.py")}
    assert "gunctl.core.formats.writers" in sources and "gunctl.cli.train" in sources
    assert _layer_violations(sources) == []


def test_the_layer_check_sees_every_form_of_import():
    planted = {
        "gunctl.core.draw": "def f():\n    from rich.table import Table\n",
        "gunctl.core.labels": "import typing\nif typing.TYPE_CHECKING:\n    import typer\n",
        "gunctl.core.images": "from gunctl.cli import console\n",
        "gunctl.core.formats.writers": "from gunctl.core.split import class_names_of\n",
        "gunctl.core.manifest": "import gunctl.core.ingest\n",
        "gunctl.core.engine": "from gunctl.core import trainer\n",
        "gunctl.config": "from gunctl.core.fileio import read_document\n",
        "gunctl.core.predict": "from gunctl.core.inference import load_detector\n",  # allowed
        "gunctl.cli.train": "from gunctl.core.trainer import fit\nimport rich\n",  # allowed
    }
    found = _layer_violations(planted)
    assert [line.split(" (")[0] for line in found] == [
        "gunctl.config imports gunctl.core.fileio",
        "gunctl.config imports gunctl.core.fileio.read_document",
        "gunctl.core.draw imports rich.table",
        "gunctl.core.draw imports rich.table.Table",
        "gunctl.core.engine imports gunctl.core.trainer",
        "gunctl.core.formats.writers imports gunctl.core.split",
        "gunctl.core.formats.writers imports gunctl.core.split.class_names_of",
        "gunctl.core.images imports gunctl.cli",
        "gunctl.core.images imports gunctl.cli.console",
        "gunctl.core.labels imports typer",
        "gunctl.core.manifest imports gunctl.core.ingest",
    ]


def test_no_shell_no_eval_in_the_package():
    import re

    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "shell=True" not in text, path
        assert not re.search(r"(?<![.\w])(eval|exec)\(", text), path  # the builtins, not .eval()
        assert "os.system" not in text and "pickle.load" not in text, path
