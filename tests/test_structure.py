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
