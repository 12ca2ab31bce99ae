"""Does `gunctl train --minutes N` end within its margin when the machine slows down part-way?

Ingests the demo data set (40 synthetic images) into a temporary folder, then runs a real
`gunctl train --minutes N` process with a tiny model (ResNet-18 FPN at 64-96 px, 32 FPN
channels, no pretrained weights: nothing downloads). At ``--hog-at`` of the budget (counted
from the process start) it starts one busy-loop process per CPU core (a CPU hog, as another
job on a shared machine would be) and keeps them running to the end. Prints the budget, the
fit's own wall time (the trainer's closing "budget of N min: S s" line), the process wall
time (imports and start-up included), the epochs, and the deviation against the margin (2 %
of the budget or 5 s, whichever is larger; gunctl.core.budget).

    nice -n 10 .venv/bin/python benchmarks/bench_budget.py [--minutes 2] [--hog-at 0.4]
    nice -n 10 .venv/bin/python benchmarks/bench_budget.py --no-hog      # the baseline
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser  # noqa: E402

TINY = [
    "--model",
    "fasterrcnn_resnet18_fpn",
    "--weights",
    "none",
    "--min-size",
    "64",
    "--max-size",
    "96",
    "--fpn-channels",
    "32",
    "--box-head-dim",
    "64",
    "--workers",
    "0",
    "--batch-size",
    "4",
]
REPORT = re.compile(r"budget of [\d.]+ min: ([\d.]+) s of wall time")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--hog-at", type=float, default=0.4, help="share of the budget")
    parser.add_argument("--no-hog", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        out = Path(tmp) / "artifacts"
        for command in (["ingest", "--source", "demo"], ["split"]):
            _gunctl(*command, "--out", str(out), "--quiet")
        figures = _run(out, args.minutes, None if args.no_hog else args.hog_at)
    budget = 60.0 * args.minutes
    margin = max(0.02 * budget, 5.0)
    fit = figures["fit_seconds"]
    print(f"budget           {budget:8.1f} s   (margin {margin:.1f} s)")
    hog = "none" if args.no_hog else f"{os.cpu_count()} busy loops from {args.hog_at:.0%}"
    print(f"CPU hog          {hog}")
    print(f"fit wall time    {fit:8.1f} s   ({100 * (fit - budget) / budget:+.2f} %)")
    print(f"process wall     {figures['process_seconds']:8.1f} s   (imports and start-up too)")
    print(f"epochs           {figures['epochs']}")
    print(f"within margin    {abs(fit - budget) <= margin}")


def _gunctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gunctl", *args], check=True, capture_output=True, text=True
    )


def _run(out: Path, minutes: float, hog_at: float | None) -> dict:
    command = [sys.executable, "-m", "gunctl", "train", "--out", str(out), "--minutes"]
    command += [str(minutes), "--run-name", "budget", *TINY]
    hogs: list[subprocess.Popen] = []
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if hog_at is not None:
        timer = threading.Timer(hog_at * 60.0 * minutes, lambda: hogs.extend(_hog()))
        timer.start()
    try:
        output, _ = process.communicate(timeout=60.0 * minutes * 3 + 300)
    finally:
        if hog_at is not None:
            timer.cancel()
        for hog in hogs:
            hog.kill()
            hog.wait()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"train failed ({process.returncode}):\n{output[-3000:]}")
    match = REPORT.search(output)
    for line in output.splitlines():  # the plans, the cut and the closing line
        if "budget of" in line:
            print(f"  | {line.strip()}")
    checkpoint = out / "runs" / "budget" / "last.pth"
    return {
        "fit_seconds": float(match.group(1)) if match else float("nan"),
        "process_seconds": wall,
        "epochs": _epochs(checkpoint),
    }


def _epochs(checkpoint: Path) -> int | None:
    from gunctl.core.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, mmap=True).get("epoch") if checkpoint.exists() else None


def _hog() -> list[subprocess.Popen]:
    loop = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)]


if __name__ == "__main__":
    main()
