"""`gunctl ingest` from a zip: wall time and peak memory, by number of members.

Two archives, built in a temporary folder: the real sample as a zip (300 pairs, 600 members)
and a zip of ``--members`` members (default 10,000: the sample's images and labels repeated
under new names). Each is ingested by ``python -m gunctl ingest --source ZIP`` in its own
process; the peak is that process's VmHWM (its resident high-water mark; ru_maxrss would
carry the parent's over the exec).

``--pythonpath DIR`` runs another checkout's gunctl (e.g. ``git archive main``) for a
before/after comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from _common import base_parser, environment, print_table, write_json

PEAK = (
    "import re, sys\n"
    "from gunctl.cli import app\n"
    "code = 0\n"
    "try:\n"
    "    app(sys.argv[2:], prog_name='gunctl')\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "status = open('/proc/self/status').read()\n"
    "open(sys.argv[1], 'w').write(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
    "sys.exit(code)\n"
)


def build_zip(data: Path, path: Path, members: int | None) -> int:
    """The sample as a zip; with ``members``, its pairs repeated under new stems up to that."""
    images = sorted((data / "Images").iterdir())
    pairs = [(image, data / "Labels" / f"{image.stem}.txt") for image in images]
    count = len(pairs) if members is None else members // 2
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(count):
            image, label = pairs[index % len(pairs)]
            stem = image.stem if members is None else str(index + 1)
            archive.write(image, f"guns/Images/{stem}{image.suffix}")
            archive.write(label, f"guns/Labels/{stem}.txt")
    return 2 * count


def ingest(archive: Path, out: Path, pythonpath: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    peak_file = out.with_suffix(".peak")
    command = [sys.executable, "-c", PEAK, str(peak_file), "ingest", "--source", str(archive)]
    started = time.perf_counter()
    result = subprocess.run(  # cwd: not the repo root, whose gunctl/ would shadow PYTHONPATH
        [*command, "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=out.parent,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"ingest failed ({result.returncode}): {result.stderr[-2000:]}")
    return {"seconds": seconds, "peak_mib": int(peak_file.read_text()) / 1024}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--members", type=int, nargs="+", default=[10_000], help="members of the big zips"
    )
    parser.add_argument("--pythonpath", default=None, help="run gunctl from this checkout")
    args = parser.parse_args()
    figures: dict = {"environment": environment(torch_info=False), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as scratch:
        root = Path(scratch)
        sizes = [("real sample", None), *((f"{n:,} members", n) for n in args.members)]
        for label, members in sizes:
            archive = root / f"{members or 'sample'}.zip"
            count = build_zip(args.data, archive, members)
            run = ingest(archive, root / f"out-{members or 'sample'}", args.pythonpath)
            run.update(
                zip=label,
                members=count,
                zip_mib=archive.stat().st_size / 2**20,
                ms_per_member=1000 * run["seconds"] / count,
            )
            figures["runs"].append(run)
    print_table(
        ["zip", "members", "zip MiB", "seconds", "ms/member", "peak MiB"],
        [
            [
                r["zip"],
                r["members"],
                round(r["zip_mib"], 1),
                round(r["seconds"], 2),
                round(r["ms_per_member"], 2),
                round(r["peak_mib"], 1),
            ]
            for r in figures["runs"]
        ],
        title="gunctl ingest --source ZIP",
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
