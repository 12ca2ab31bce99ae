"""Training images/s with 1 and with N CPU processes under torchrun (gloo), on the real sample.

Runs `gunctl train --nproc P` (which starts `torch.distributed.run --standalone`) for each
P in --procs, one epoch over the same --subset images with the default model and per-process
batch size, and reads the epoch's training images/s back from the checkpoint. On a machine
with 2 cores, 2 processes share the cores that 1 process already uses: expect little gain.

    .venv/bin/python benchmarks/bench_ddp.py --json ddp.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "guns-sample"))
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--subset", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gunctl-bench-ddp-") as tmp:
        out = Path(tmp) / "artifacts"
        gunctl("ingest", "--source", args.data, "--out", out, "--quiet")
        gunctl("split", "--out", out, "--quiet")
        for procs in args.procs:
            rows.append(run(out, procs, args.subset))
    print(f"{'processes':>9} {'train images':>12} {'train img/s':>11} {'wall s':>7}")
    for row in rows:
        print(
            f"{row['processes']:>9} {row['images']:>12} {row['images_per_s']:>11.2f} "
            f"{row['wall_s']:>7.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def gunctl(*args) -> None:
    subprocess.run([sys.executable, "-m", "gunctl", *map(str, args)], check=True)


def run(out: Path, procs: int, subset: int) -> dict:
    from gunctl.core.checkpoint import load_checkpoint

    name = f"p{procs}"
    started = time.perf_counter()
    gunctl(
        "train",
        "--recipe",
        "plain",  # the recorded figures predate recipes
        "--nproc",
        procs,
        "--epochs",
        1,
        "--subset",
        subset,
        "--weights",
        "none",
        "--out",
        out,
        "--run-name",
        name,
        "--quiet",
    )
    wall = time.perf_counter() - started
    train = load_checkpoint(out / "runs" / name / "last.pth")["metrics"]["train"]
    return {
        "processes": procs,
        "images": train["images"],
        "images_per_s": train["images_per_s"],
        "wall_s": wall,
    }


if __name__ == "__main__":
    sys.exit(main())
