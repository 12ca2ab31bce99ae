"""Detection quality of a training recipe: val mAP@0.5 and mAP@0.5:0.95 over several folds.

Ingests the real sample (default ../shared/data/guns-sample) into a temporary output root,
then for each seed makes the split with that seed (a different 240/60 fold each) and trains
with that seed, under the given recipe and budget (--minutes, --epochs or --steps), through
gunctl's own trainer (what `gunctl train` runs). Reports, per fold and as mean and spread,
val mAP@0.5 and mAP@0.5:0.95 of the final model (what the run ends with) and of the best
epoch (what `gunctl validate` scores by default, artifacts/models/fasterrcnn.pth), training
images/s and wall time; --tta also scores the final model with flip TTA. With --holdout N,
each seed first sets N images of the sample aside (a seeded draw, a different one per seed),
ingests and splits the rest with a val part of about N images, and scores both the best-on-val
checkpoint (best.pth) and the final EMA weights (last.pth) on the N images nobody selected on:
how far the choice of checkpoint falls outside the images it was chosen on. Any option of the
recipe can be changed with --set (e.g. --set lr=3e-4 --set model.norm=bn), as the user would
with a flag: the recipe fills only the rest.

    .venv/bin/python benchmarks/bench_quality.py --recipe scratch --epochs 4 --seeds 0 1
    .venv/bin/python benchmarks/bench_quality.py --recipe plain --minutes 15 --seeds 0 1
    .venv/bin/python benchmarks/bench_quality.py --epochs 3 --set mosaic=0 --name no-mosaic

Results go to stdout and to benchmarks/results/quality-<name>.json; the temporary data and
runs are removed at the end unless --keep (then their folder is printed).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, base_parser, environment  # noqa: E402


def main() -> int:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="gunctl-quality-"))
    try:
        raw_root = None if args.holdout else ingest(args.data, root / "data")
        runs = []
        for seed in args.seeds:
            holdout = None
            if args.holdout:
                kept, holdout = set_aside(args.data, root / f"holdout{seed}", args.holdout, seed)
                raw_root = ingest(kept, root / f"data{seed}")
            runs.append(run_fold(args, raw_root, root / f"fold{seed}", seed, holdout))
            report(args, runs)
    finally:
        if args.keep:
            print(f"kept: {root} (fold<seed>/runs/bench/best.pth and last.pth)")
        else:
            shutil.rmtree(root, ignore_errors=True)  # 80-270 MB a seed
    return 0


def set_aside(data: Path, root: Path, count: int, seed: int) -> tuple[Path, Path]:
    """Copy the sample (Kaggle layout: Images/N.jpeg, Labels/N.txt) into two folders: ``count``
    images drawn with ``seed`` (the holdout) and the rest."""
    import random

    stems = sorted(p.stem for p in (data / "Images").iterdir() if p.is_file())
    held = set(random.Random(seed).sample(stems, count))
    parts = {"rest": root / "rest", "holdout": root / "holdout"}
    for part in parts.values():
        (part / "Images").mkdir(parents=True)
        (part / "Labels").mkdir(parents=True)
    for image in (data / "Images").iterdir():
        part = parts["holdout" if image.stem in held else "rest"]
        shutil.copy2(image, part / "Images" / image.name)
        label = data / "Labels" / f"{image.stem}.txt"
        if label.exists():
            shutil.copy2(label, part / "Labels" / label.name)
    return parts["rest"], parts["holdout"]


def parse_args():
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="scratch", choices=["scratch", "finetune", "plain"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="split+train seeds")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None)
    budget.add_argument("--epochs", type=int, default=None)
    budget.add_argument("--steps", type=int, default=None, help="rounded to whole epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="also score the final model with TTA")
    parser.add_argument("--name", default=None, help="results file: quality-<name>.json")
    parser.add_argument(
        "--holdout", type=int, default=0, help="images set aside per seed, scored at the end"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary data and runs (path printed)"
    )
    args = parser.parse_args()
    if args.minutes is None and args.epochs is None and args.steps is None:
        args.epochs = 3
    return args


def ingest(data: Path, root: Path) -> Path:
    from gunctl.config import IngestConfig, Layout
    from gunctl.core.ingest import ingest as run_ingest

    layout = Layout(root)
    run_ingest(IngestConfig(source=str(data), layout=layout))
    return layout.raw


def run_fold(args, raw: Path, root: Path, seed: int, holdout: Path | None) -> dict:
    from gunctl.config import Layout, SplitConfig
    from gunctl.core.split import create_split
    from gunctl.core.trainer import fit

    layout = Layout(root)
    root.mkdir(parents=True)
    (root / "raw").symlink_to(raw)
    fraction = 0.2
    if holdout is not None:  # a val part about as large as the holdout
        fraction = round(args.holdout / (300 - args.holdout), 3)
    made = create_split(SplitConfig(seed=seed, layout=layout, val_fraction=fraction))
    config = make_config(args, layout, seed, len(made.split["train"]))
    started = time.perf_counter()
    result = fit(config, [EpochPrinter(seed)])
    wall = time.perf_counter() - started
    validated = [r for r in result.history if r["val"]]
    final = validated[-1]["val"]
    best = max(validated, key=lambda r: r["val"].get("map_50") or 0.0)
    images = sum(r["train"]["images"] for r in result.history)
    train_seconds = sum(r["train"]["seconds"] for r in result.history)
    row = {
        "seed": seed,
        "epochs": result.epochs,
        "final_map50": final.get("map_50"),
        "final_map": final.get("map"),
        "best_map50": best["val"].get("map_50"),
        "best_map": best["val"].get("map"),
        "best_epoch": best["epoch"],
        "per_epoch_map50": [r["val"].get("map_50") for r in result.history],
        "train_images_per_s": images / train_seconds if train_seconds else 0.0,
        "wall_seconds": wall,
        "config": {k: v for k, v in _stored_config(result).items() if k != "layout"},
    }
    if args.tta:
        row.update(tta_scores(layout, result.last_checkpoint))
    if holdout is not None:
        row["holdout"] = {
            "images": args.holdout,
            "best": holdout_scores(layout, result.best_checkpoint, holdout),
            "last": holdout_scores(layout, result.last_checkpoint, holdout),
        }
        row["val_images"], row["train_images"] = result.val_images, result.train_images
        print(f"seed {seed}: holdout {json.dumps(row['holdout'])}", flush=True)
    print(
        f"seed {seed}: final mAP@0.5 {row['final_map50']:.3f} mAP {row['final_map']:.3f}  "
        f"best mAP@0.5 {row['best_map50']:.3f} (epoch {row['best_epoch']})  "
        f"{row['epochs']} epochs  {row['train_images_per_s']:.2f} img/s  {wall / 60:.1f} min",
        flush=True,
    )
    return row


class EpochPrinter:
    """One line per epoch on stdout (a gunctl Callback, duck-typed)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __getattr__(self, name):  # every other hook: nothing
        return lambda *args: None

    def on_epoch_end(self, state, record, result) -> None:
        val, train = record["val"], record["train"]
        shown = f"mAP@0.5 {val['map_50']:.3f} mAP {val['map']:.3f}" if val else "not validated"
        print(
            f"  seed {self.seed} epoch {record['epoch']}/{state.config.epochs}: train loss "
            f"{train['loss']:.3f}  {shown}  {train['images_per_s']:.2f} img/s  "
            f"{record['seconds']:.0f} s",
            flush=True,
        )


def make_config(args, layout, seed: int, train_images: int):
    from gunctl.config import TrainConfig

    values, explicit = {}, []
    for item in args.set:
        key, _, text = item.partition("=")
        values[key] = _parse(text)
        explicit.append(key)
    config = TrainConfig(
        layout=layout, recipe=args.recipe, seed=seed, workers=args.workers, run_name="bench"
    )
    model = dataclasses.replace(config.model, weights=args.weights)
    if args.minutes is not None:
        config = dataclasses.replace(config, minutes=args.minutes)
    else:
        epochs = args.epochs or max(1, round(args.steps / math.ceil(train_images / 2)))
        config = dataclasses.replace(config, epochs=epochs)
        explicit.append("epochs")
    top = {k: v for k, v in values.items() if "." not in k}
    model = dataclasses.replace(
        model, **{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model.")}
    )
    return dataclasses.replace(config, **top, model=model, explicit=tuple(explicit))


def tta_scores(layout, checkpoint: Path) -> dict:
    from gunctl.config import ValidateConfig
    from gunctl.core.validate import validate_checkpoint

    result = validate_checkpoint(ValidateConfig(checkpoint=checkpoint, layout=layout, tta=True))
    tta = result.tta or {}
    return {"tta_map50": tta.get("map_50"), "tta_map": tta.get("map")}


def holdout_scores(layout, checkpoint: Path | None, holdout: Path) -> dict | None:
    """mAP@0.5, mAP, and precision/recall at the checkpoint's own threshold, on the holdout."""
    from gunctl.config import ValidateConfig
    from gunctl.core.checkpoint import default_score_threshold, load_checkpoint
    from gunctl.core.validate import validate_checkpoint

    if checkpoint is None:
        return None
    threshold, _ = default_score_threshold(load_checkpoint(checkpoint))
    result = validate_checkpoint(
        ValidateConfig(
            checkpoint=checkpoint, layout=layout, data=holdout, workers=0,
            score_threshold=threshold,
        )
    )  # fmt: skip
    keep = ("map_50", "map", "precision", "recall")
    scores = {k: result.metrics.get(k) for k in keep}
    return scores | {"threshold": threshold, "epoch": result.facts.get("epoch")}


def _stored_config(result) -> dict:
    from gunctl.core.checkpoint import load_checkpoint

    return load_checkpoint(result.last_checkpoint)["config"]


def _parse(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def report(args, runs: list[dict]) -> None:
    summary = {}
    for run in runs:
        for which, scores in (run.get("holdout") or {}).items():
            if isinstance(scores, dict):
                run[f"holdout_{which}_map50"] = scores.get("map_50")
    keys = ("final_map50", "final_map", "best_map50", "best_map", "tta_map50", "tta_map")
    keys += ("holdout_best_map50", "holdout_last_map50")
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key] = {"mean": statistics.fmean(values), "stdev": spread, "n": len(values)}
    budget = (
        f"{args.minutes} min"
        if args.minutes is not None
        else f"{args.epochs or args.steps} " + ("epochs" if args.epochs else "steps")
    )
    line = "  ".join(f"{k} {v['mean']:.3f}±{v['stdev']:.3f}" for k, v in summary.items())
    print(f"{args.recipe} {' '.join(args.set)} @ {budget}, seeds {args.seeds}: {line}", flush=True)
    name = args.name or f"{args.recipe}-{budget.replace(' ', '')}"
    payload = {
        "recipe": args.recipe,
        "set": args.set,
        "budget": budget,
        "seeds": args.seeds,
        "summary": summary,
        "runs": runs,
        "environment": environment(),
    }
    out = args.json or BENCH_DIR / "results" / f"quality-{name}.json"
    Path(out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
