"""End-to-end wall time: ``gunctl train --epochs 1 --subset 5`` versus the original loop.

Both run as their own process and are timed from just before the spawn to just after exit
(interpreter start-up, imports, model build, training, validation and saving included):

  gunctl     ``gunctl train --epochs 1 --subset 5 --out <tmp> --quiet --weights none``, with
             gunctl's defaults otherwise (after ``gunctl ingest`` and ``gunctl split``, which
             are not timed). ``--weights none`` because the reference trains from random
             weights too, and nothing can be downloaded here (``--weights auto`` would try).
  reference  benchmarks/reference.py at the original pipeline's settings (800/1333 px,
             batch 3, torchvision's proposal counts, Adam 1e-4) over the same 5 images: one
             epoch on the train images, then the validation loss on the val image (train mode,
             ``torch.no_grad``), then ``torch.save`` of the state_dict, as the original did.

The 5 images are the subset gunctl trained on, reproduced with ``subset_split`` (seed 0) from
the saved split and checked against the split checksum stored in gunctl's checkpoint.

    .venv/bin/python benchmarks/bench_e2e.py [--repeats 1] [--json FILE]
    .venv/bin/python benchmarks/bench_e2e.py --quick      # the reference at 320 px
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import (
    BENCH_DIR,
    REPO_ROOT,
    base_parser,
    check_ran,
    environment,
    image_pairs,
    print_table,
    run_timed,
    write_json,
)

SUBSET = 5
SEED = 0  # gunctl train's default --seed: the subset it draws


def gunctl_command() -> list[str]:
    """The installed console script when there is one (what a user types), else -m."""
    script = Path(sys.executable).parent / "gunctl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gunctl"]


def prepare(data: Path, out: Path) -> None:
    """gunctl ingest and gunctl split into ``out`` (not timed)."""
    commands = (["ingest", "--source", str(data), "--out", str(out)], ["split", "--out", str(out)])
    for args in commands:
        ran, _ = run_timed([*gunctl_command(), *args], cwd=REPO_ROOT)
        check_ran(f"gunctl {args[0]}", ran)


def time_gunctl(out: Path, run_name: str, weights: str, recipe: str | None) -> tuple[float, dict]:
    cmd = [
        *gunctl_command(),
        "train",
        *(["--recipe", recipe] if recipe else []),  # default: the recipe gunctl picks
        "--epochs",
        "1",
        "--subset",
        str(SUBSET),
        "--out",
        str(out),
        "--quiet",
        "--weights",
        weights,
        "--run-name",
        run_name,
    ]
    ran, seconds = run_timed(cmd, cwd=REPO_ROOT)
    check_ran("gunctl train", ran)
    return seconds, _checkpoint_facts(out, run_name)


def _checkpoint_facts(out: Path, run_name: str) -> dict:
    """What gunctl's own checkpoint says about the run: its split and epoch timings."""
    from gunctl.config import Layout
    from gunctl.core.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(Layout(out).run_dir(run_name) / "last.pth", mmap=True)
    record = checkpoint["history"][-1]
    return {
        "split_checksum": checkpoint.get("split_checksum"),
        "train_seconds": record["train"]["seconds"],
        "train_images": record["train"]["images"],
        "val_seconds": record["val"]["seconds"],
        "val_images": record["val"]["images"],
        "train_loss": record["train"]["loss"],
        "val_loss": record["val"]["loss"],
        "weights_origin": checkpoint.get("weights_origin"),
    }


def subset_items(out: Path) -> tuple[dict, str]:
    """The subset ``gunctl train --subset 5`` drew (seed 0), and its checksum."""
    from gunctl.config import Layout
    from gunctl.core.split import load_split, split_checksum, subset_split

    subset = subset_split(load_split(Layout(out).split_file), SUBSET, SEED)
    return subset, split_checksum(subset)


def time_reference(data: Path, subset: dict, scratch: Path, min_size: int) -> tuple[float, dict]:
    spec, result = scratch / "reference-spec.json", scratch / "reference-result.json"
    pairs = {part: image_pairs(data, subset[part]) for part in ("train", "val")}
    spec.write_text(json.dumps(pairs))
    cmd = [
        sys.executable,
        str(BENCH_DIR / "reference.py"),
        "--spec",
        str(spec),
        "--epochs",
        "1",
        "--min-size",
        str(min_size),
        "--save",
        str(scratch / "reference" / "fasterrcnn.pth"),
        "--result",
        str(result),
    ]
    ran, seconds = run_timed(cmd, cwd=REPO_ROOT)
    check_ran("reference", ran)
    return seconds, json.loads(result.read_text())


def measure(args) -> dict:
    gunctl_s, reference_s, facts, phases = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="gunctl-bench-e2e-") as tmp:
        scratch = Path(tmp)
        out = scratch / "artifacts"
        prepare(args.data, out)
        subset, checksum = subset_items(out)
        for repeat in range(args.repeats):
            print(f"run {repeat + 1}/{args.repeats}: gunctl train ...", flush=True)
            seconds, fact = time_gunctl(out, f"e2e-{repeat}", args.weights, args.recipe)
            gunctl_s.append(seconds)
            facts.append(fact)
            print(f"run {repeat + 1}/{args.repeats}: reference ...", flush=True)
            seconds, result = time_reference(args.data, subset, scratch, args.min_size)
            reference_s.append(seconds)
            phases.append(result["phases"])
    same = all(f["split_checksum"] == checksum for f in facts)
    return {
        "gunctl_seconds": gunctl_s,
        "reference_seconds": reference_s,
        "gunctl_checkpoint": facts,
        "reference_phases": phases,
        "images": {part: [i["image"] for i in subset[part]] for part in ("train", "val")},
        "same_images_as_gunctl": same,
    }


def report(figures: dict, args) -> None:
    g = statistics.median(figures["gunctl_seconds"])
    r = statistics.median(figures["reference_seconds"])
    fact, phase = figures["gunctl_checkpoint"][-1], figures["reference_phases"][-1]
    rows = [
        [
            "gunctl train (defaults)",
            g,
            fact["train_seconds"],
            fact["val_seconds"],
            g - fact["train_seconds"] - fact["val_seconds"],
        ],
        [
            f"reference ({args.min_size} px)",
            r,
            None,
            None,
            phase["imports"] + phase["setup"] + phase.get("save", 0.0),
        ],
    ]
    print_table(
        ["process", "wall s", "train s", "val s", "start-up/other s"],
        rows,
        title=f"end to end, 1 epoch on {SUBSET} images (median of {args.repeats})",
    )
    print(
        f"reference phases: imports {phase['imports']:.2f} s, setup {phase['setup']:.2f} s, "
        f"train + val loss {phase['train_and_val']:.2f} s, save {phase.get('save', 0.0):.2f} s"
    )
    print(f"images: train {figures['images']['train']}, val {figures['images']['val']}")
    print(f"same images as gunctl's run (split checksum): {figures['same_images_as_gunctl']}")
    figures["speedup"] = r / g
    print(f"speed-up reference / gunctl: {r / g:.2f}x  (target >= 5x, issue 16)")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; medians shown")
    parser.add_argument("--weights", default="none", help="gunctl train --weights")
    parser.add_argument(
        "--recipe",
        default=None,
        help="gunctl train --recipe (default: gunctl's choice; plain: before 0.2)",
    )
    parser.add_argument("--min-size", type=int, default=800, help="the reference's min_size")
    parser.add_argument("--quick", action="store_true", help="the reference at 320 px")
    args = parser.parse_args()
    if args.quick:
        args.min_size = 320
    figures = measure(args)
    report(figures, args)
    figures.update(environment=environment(), min_size_reference=args.min_size)
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
