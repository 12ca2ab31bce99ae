"""Wall time of ``gunctl --help``: how fast the CLI answers before any heavy import.

Times ``python -m gunctl --help`` and the installed ``gunctl`` console script (when present),
each N times after one untimed warm-up run, from just before the process is spawned to just
after it exits. A bare ``python -c pass`` is timed the same way, as the interpreter's floor.

    .venv/bin/python benchmarks/bench_help.py [--runs 15] [--json FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import REPO_ROOT, base_parser, environment, print_table, run_timed, summary, write_json


def commands() -> dict[str, list[str]]:
    """The command lines to time, by label."""
    found = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "python -m gunctl --help": [sys.executable, "-m", "gunctl", "--help"],
    }
    script = console_script()
    if script is not None:
        shown = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
        found[f"{shown} --help"] = [str(script), "--help"]
    return found


def console_script() -> Path | None:
    """The ``gunctl`` entry point beside this interpreter, else the repo's .venv one."""
    for candidate in (Path(sys.executable).parent / "gunctl", REPO_ROOT / ".venv/bin/gunctl"):
        if candidate.is_file():
            return candidate
    return None


def time_command(cmd: list[str], runs: int) -> list[float]:
    """One warm-up run (page cache, .pyc files), then ``runs`` timed runs."""
    times = []
    for index in range(runs + 1):
        result, seconds = run_timed(cmd, cwd=REPO_ROOT)
        if result["returncode"] != 0:
            sys.stderr.write(result["stderr"][-2000:])
            raise SystemExit(f"{' '.join(cmd)} exited with {result['returncode']}")
        if index > 0:
            times.append(seconds)
    return times


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command")
    parser.add_argument("--quick", action="store_true", help="3 runs (smoke test)")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    figures: dict = {"environment": environment(torch_info=False), "runs": runs, "commands": {}}
    rows = []
    for label, cmd in commands().items():
        stats = summary(time_command(cmd, runs))
        figures["commands"][label] = stats
        rows.append([label, stats["median"], stats["min"], stats["max"]])
    print_table(
        ["command", "median s", "min s", "max s"],
        rows,
        title=f"wall time, {runs} runs after 1 warm-up",
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
