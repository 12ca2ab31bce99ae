"""``gunctl predict`` images/s with 1 process and with N CPU processes under torchrun (gloo).

Runs ``gunctl predict`` on the same copy of the sample's images, first as one process, then
with ``--nproc P`` for each P > 1 in --procs, and reads the job's images/s from the summary it
prints (from the first image to the merged predictions.jsonl, all ranks together), with the
command's wall time beside it (start-up, model loading and the merge included). Nothing is
trained: ``bench_validate.write_checkpoint`` writes a randomly initialised model at gunctl's
default settings (or --checkpoint names a real one). Under torchrun each process runs one
thread (OMP_NUM_THREADS=1); one process runs torch's default (every core), and once more on
one thread, for comparison.

    .venv/bin/python benchmarks/bench_predict_dist.py --json predict-dist.json
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import base_parser, environment, print_table, write_json
from bench_validate import write_checkpoint


def predict(checkpoint: Path, folder: Path, out: Path, procs: int, args, one_thread=False) -> dict:
    command = [sys.executable, "-m", "gunctl", "predict", str(folder), "--weights", str(checkpoint)]
    command += ["--out", str(out), "--batch-size", str(args.batch_size), "--device", "cpu"]
    if procs > 1:
        command += ["--nproc", str(procs)]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if one_thread else None
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed: {result.stderr[-2000:]}")
    told = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    records = (out / "predictions.jsonl").read_text().count("\n")
    return {
        "processes": procs,
        "threads_per_process": 1 if one_thread or procs > 1 else "default",
        "images": int(told["files"]),
        "jsonl_lines": records,
        "images_per_s": float(told["images/s"]),
        "wall_s": wall,
        "wall_images_per_s": int(told["files"]) / wall,
        "load_avg_1m_before": load,
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="a real checkpoint instead")
    parser.add_argument("--images", type=int, default=300, help="the first N sample images")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    paths = sorted((args.data / "Images").iterdir())[: args.images]
    figures: dict = {"environment": environment(), "args": vars(args) | {"data": str(args.data)}}
    with tempfile.TemporaryDirectory(prefix="gunctl-bench-predict-dist-") as name:
        tmp = Path(name)
        folder = tmp / "images"
        folder.mkdir()
        for path in paths:
            shutil.copyfile(path, folder / path.name)  # a copy: predict skips symlinks out
        checkpoint = args.checkpoint or write_checkpoint(tmp / "ckpt.pth", None)
        rows = [predict(checkpoint, folder, tmp / f"out-{p}", p, args) for p in args.procs]
        if 1 in args.procs:  # one process on one thread: what each rank runs
            rows.insert(1, predict(checkpoint, folder, tmp / "out-1t", 1, args, one_thread=True))
    figures["runs"] = rows
    headers = ["processes", "threads", "images", "lines", "img/s (job)", "wall s", "img/s (wall)"]
    print_table(
        [*headers, "load"],
        [
            [
                r["processes"],
                r["threads_per_process"],
                r["images"],
                r["jsonl_lines"],
                r["images_per_s"],
                r["wall_s"],
                r["wall_images_per_s"],
                r["load_avg_1m_before"],
            ]
            for r in rows
        ],
        title=f"gunctl predict, {len(paths)} sample images, batch {args.batch_size}, CPU",
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
