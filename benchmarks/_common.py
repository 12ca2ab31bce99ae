"""Helpers shared by the benchmark scripts: paths, arguments, tables, JSON, RSS, temp data.

Every script here prints figures and never judges them (no pass/fail). Heavy modules
(torch, gunctl's core, psutil) are imported inside the functions that need them, so that a
script's own start-up stays cheap where that matters (``bench_help``, ``reference``).
``gpu_bench.py`` does not use this module: it must run where gunctl is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "benchmarks"
DEFAULT_DATA = (REPO_ROOT / ".." / "shared" / "data" / "guns-sample").resolve()
# torchvision's proposal and RoI counts: the original pipeline's (reference.py keeps its own copy,
# since it imports nothing of this repository).
TORCHVISION_COUNTS = {
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000,
    "box_batch_size_per_image": 512,
    "box_detections_per_img": 100,
}


def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every script shares: --data and --json."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="data set folder in the Kaggle layout"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def environment(torch_info: bool = True) -> dict[str, Any]:
    """What the figures were measured on, for the JSON reports (``torch_info`` imports torch)."""
    import os

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
    if not torch_info:
        return info
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nfigures written to {path}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A plain-text table: left-aligned text, right-aligned numbers."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]
    if title:
        print(f"\n{title}")

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max (seconds)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def peak_rss_mib() -> float:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def children_peak_rss_mib() -> float:
    """The largest peak resident set among finished, waited-for children (e.g. DataLoader
    workers that have been shut down); a maximum, not a sum."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20


def run_timed(cmd: Sequence[str], *, cwd: Path | None = None, sample_memory: bool = False):
    """Run ``cmd`` to completion; returns (result dict, wall seconds).

    The wall time runs from just before the process is spawned to just after it exits.
    With ``sample_memory``, the memory of the process and all its descendants (DataLoader
    workers) is summed every 0.2 s (psutil) and the peak is returned as
    ``peak_tree_pss_mib``: proportional set size, so that pages a forked worker shares with
    its parent count once, not once per process (RSS where PSS cannot be read).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=err, text=True)
        peak = _sample_tree_memory(proc) if sample_memory else None
        proc.wait()
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        result = {"returncode": proc.returncode, "stdout": out.read(), "stderr": err.read()}
    if peak is not None:
        result["peak_tree_pss_mib"] = peak
    return result, seconds


def _sample_tree_memory(proc: subprocess.Popen) -> float | None:
    """Peak of the summed PSS of ``proc`` and its descendants while it runs."""
    try:
        import psutil
    except ImportError:
        return None
    peak = 0
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += _pss(p)
            peak = max(peak, total)
            time.sleep(0.2)
    except psutil.Error:
        pass
    return peak / 2**20


def _pss(process) -> int:
    try:
        return process.memory_full_info().pss
    except AttributeError:  # no PSS on this platform
        return process.memory_info().rss


def check_ran(name: str, result: dict) -> None:
    """Stop with the child's stderr when a measured subprocess failed."""
    if result["returncode"] != 0:
        sys.stderr.write(result["stderr"][-4000:])
        raise SystemExit(f"{name}: the subprocess exited with {result['returncode']}")


def ingest_sample(data: Path, root: Path, subset: int | None = None):
    """Ingest ``data`` into ``root`` and write the default split (seed 0, 20 % val);
    returns (Layout, split dict). Uses gunctl's own ingest and split code."""
    from gunctl.config import IngestConfig, Layout, SplitConfig
    from gunctl.core.ingest import ingest
    from gunctl.core.split import create_split

    if not (Path(data) / "Images").is_dir():
        raise SystemExit(f"{data}: no Images/ folder (pass --data, the Kaggle layout)")
    layout = Layout(Path(root))
    ingest(IngestConfig(source=str(data), layout=layout))
    made = create_split(SplitConfig(subset=subset, layout=layout))
    return layout, made.split


def image_pairs(data: Path, items: Sequence[dict]) -> list[list[str]]:
    """``[image path, label path]`` in the source folder for split items (the same names and
    bytes that ingest copied into raw/), for the reference loop that reads the Kaggle tree."""
    return [
        [str(Path(data) / "Images" / i["image"]), str(Path(data) / "Labels" / i["label"])]
        for i in items
    ]
