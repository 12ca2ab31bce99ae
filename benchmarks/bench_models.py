"""Detector families side by side (issue 28): size and CPU speed at each family's default size,
and time-to-accuracy from scratch (the figures of ``bench_quality.py`` runs, collected).

Per family (``--models``), the scratch recipe's model as ``gunctl train --model NAME`` builds
it (its default size; anchors fitted when a checkpoint says so): parameters, and on the CPU
(``--threads``, 2 by default) through the inference core (``load_detector``, what ``predict``,
``serve`` and ``watch`` run): ms per image one image at a time, ms per image in ``predict``'s
batches (``--batch-size``, predict's default 4), and the model's ONNX export in onnxruntime
(one image per run: the exported file's signature), on the sample's real images. Speed is
measured on a trained checkpoint when ``--checkpoint NAME=PATH`` gives one (its threshold and
its detections are a trained model's: NMS work included), else on an untrained model at a
0.05 threshold (marked "untrained" in the table). Median of per-call times after warm-up.

``--quality-glob`` collects the time-to-accuracy runs of ``bench_quality.py`` (results
``quality-models-m<M>-<model>-seed<S>.json``, e.g. made by
``bench_quality.py --minutes 5 --seeds 0 --set model.name=retinanet_resnet18_fpn
--name models-m5-retinanet_resnet18_fpn-seed0``) into val mAP@0.5 per budget, mean over seeds.

    .venv/bin/python benchmarks/bench_models.py [--images 40] [--json FILE]
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from _common import BENCH_DIR, base_parser, environment, print_table, write_json

MODELS = (
    "fasterrcnn_resnet18_fpn",
    "retinanet_resnet18_fpn",
    "fcos_resnet18_fpn",
    "ssdlite320_mobilenet_v3_large",
)


def main() -> int:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    images = load_images(args.data, args.images)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    rows, figures = [], {"environment": environment(), "threads": args.threads, "models": {}}
    figures["environment"]["load_avg_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gunctl-models-") as tmp:
        for name in args.models:
            path = Path(checkpoints[name]) if name in checkpoints else None
            result = measure(name, path, images, Path(tmp), args)
            figures["models"][name] = result
            rows.append(row(name, result))
            print(json.dumps({name: result}), flush=True)
    figures["environment"]["load_avg_end"] = os.getloadavg()
    figures["quality"] = collect_quality(args.quality_glob)
    print_table(
        ("model", "weights", "params (M)", "size", "ms/img b1 (CPU ms)",
         f"ms/img b{args.batch_size} (CPU ms)", "--runtime auto ms/img", "ONNX ms/img (CPU ms)",
         "ONNX parity px / score"),
        rows,
        title=f"CPU, {args.threads} threads, {len(images)} sample images "
        f"(load average {figures['environment']['load_avg_start'][0]:.1f} at the start)",
    )  # fmt: skip
    quality_table(figures["quality"])
    write_json(args.json, figures)
    return 0


def parse_args():
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH")
    parser.add_argument("--images", type=int, default=40, help="sample images timed")
    parser.add_argument("--batch-size", type=int, default=4, help="predict's default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--quality-glob", default="quality-models-m*-*.json", help="in benchmarks/results"
    )
    return parser.parse_args()


def load_images(data: Path, count: int):
    from torchvision.io import ImageReadMode, decode_image, read_file

    paths = sorted((data / "Images").iterdir())[:count]
    return [decode_image(read_file(str(p)), mode=ImageReadMode.RGB) for p in paths]


def measure(name: str, checkpoint: Path | None, images, tmp: Path, args) -> dict:
    from gunctl.config import ExportConfig
    from gunctl.core.export import export
    from gunctl.core.inference import load_detector

    trained = checkpoint is not None
    if checkpoint is None:
        checkpoint = untrained_checkpoint(name, tmp / f"{name}.pth", images)
    threshold = None if trained else 0.05
    detector = load_detector(checkpoint, device="cpu", score_threshold=threshold, runtime="torch")
    model = detector._backend.model
    params = sum(p.numel() for p in model.parameters())
    one, one_cpu = per_image_ms(detector.detect, images, 1, args.warmup)
    batched, batched_cpu = per_image_ms(detector.detect, images, args.batch_size, 1)
    result = {
        "checkpoint": str(checkpoint) if trained else "untrained",
        "parameters": params,
        "input": detector.identity.get("min_size"),
        "max_size": detector.identity.get("max_size"),
        "threshold": detector.threshold,
        "ms_per_image_batch1": one,
        "cpu_ms_per_image_batch1": one_cpu,
        f"ms_per_image_batch{args.batch_size}": batched,
        f"cpu_ms_per_image_batch{args.batch_size}": batched_cpu,
        "boxes_per_image": statistics.fmean(len(r["boxes"]) for r in detector.detect(images[:8])),
    }
    # what predict, validate, serve and watch run by default (--runtime auto)
    started = time.perf_counter()
    default = load_detector(checkpoint, device="cpu", score_threshold=threshold)
    result["auto_load_s"] = time.perf_counter() - started
    result["auto_runtime"] = default.identity.get("runtime")
    result["auto_ms_per_image"], result["auto_cpu_ms_per_image"] = per_image_ms(
        default.detect, images, 1, args.warmup
    )
    onnx_path = tmp / f"{name}.onnx"
    try:
        exported = export(
            ExportConfig(
                checkpoint=checkpoint,
                format="onnx",
                out=onnx_path,
                score_threshold=detector.threshold,
            )
        )
    except Exception as exc:  # a family that does not export: the table says so
        result["onnx_error"] = str(exc).splitlines()[0]
        return result
    assert load_detector(onnx_path).identity["model"] == name  # the core reads it back
    session = onnx_session(onnx_path, args.threads)

    def run_onnx(batch):
        for image in batch:
            session.run(None, {"image": image.contiguous().numpy()})

    result["onnx_ms_per_image"], result["onnx_cpu_ms_per_image"] = per_image_ms(
        run_onnx, images, 1, args.warmup
    )
    result["onnx_parity"] = [exported.max_box_diff, exported.max_score_diff]
    return result


def onnx_session(path: Path, threads: int):
    """onnxruntime on ``threads`` threads (the core's session takes onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def per_image_ms(detect, images, batch_size: int, warmup: int) -> tuple[float, float]:
    """Median over calls of the call's wall and CPU (this process's, all threads)
    milliseconds per image. CPU time barely moves with load on a shared machine; wall time
    at two threads suffers from it (a descheduled thread stalls the other)."""
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    for batch in batches[:warmup]:
        detect(batch)
    walls, cpus = [], []
    for batch in batches:
        started, cpu = time.perf_counter(), time.process_time()
        detect(batch)
        walls.append((time.perf_counter() - started) * 1000 / len(batch))
        cpus.append((time.process_time() - cpu) * 1000 / len(batch))
    return statistics.median(walls), statistics.median(cpus)


def calibrate_batchnorm(model, images) -> None:
    """BatchNorm statistics (SSDlite's) from the sample's images instead of unit ones: an
    untrained model's activations then spread as a trained one's, and its scores do not tie
    (ties would let two runtimes keep different boxes of one score)."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average
    model.eval()
    for layer in layers:
        layer.train()
    with torch.no_grad():
        model([image.float() / 255 for image in images[:8]])
    model.eval()


def untrained_checkpoint(name: str, path: Path, images) -> Path:
    """The scratch recipe's model for ``name`` (what ``gunctl train --model NAME`` builds,
    anchors as the model's own), untrained, as a gunctl checkpoint."""
    import torch

    from gunctl.config import CLASS_NAMES, ModelConfig, TrainConfig, to_dict
    from gunctl.core.checkpoint import save_checkpoint
    from gunctl.core.model import build_model
    from gunctl.core.recipes import resolve

    config = TrainConfig(
        model=ModelConfig(name=name, weights="none"), explicit=("model.name", "model.weights")
    )
    config = dataclasses.replace(resolve(config), fit_anchors=False)
    torch.manual_seed(0)
    model = build_model(config.model).model
    calibrate_batchnorm(model, images)
    stored = to_dict(config)
    stored.pop("layout")
    payload = {
        "model": model.state_dict(),
        "epoch": 0,
        "config": stored,
        "class_names": list(CLASS_NAMES),
        "run_name": "untrained",
        "weights_origin": "none",
        "metrics": None,
    }
    save_checkpoint(path, payload)
    return path


def row(name: str, r: dict) -> list:
    size = f"{r['input']}" if r["input"] == r["max_size"] else f"{r['input']}-{r['max_size']}"
    batched = next(v for k, v in r.items() if k.startswith("ms_per_image_batch") and k[-1] != "1")
    batched_cpu = next(
        v for k, v in r.items() if k.startswith("cpu_ms_per_image_batch") and k[-1] != "1"
    )
    parity = r.get("onnx_parity")
    onnx = (
        f"{r['onnx_ms_per_image']:.1f} ({r['onnx_cpu_ms_per_image']:.1f})"
        if "onnx_ms_per_image" in r
        else r.get("onnx_error")
    )
    return [
        name,
        "trained" if r["checkpoint"] != "untrained" else "untrained",
        round(r["parameters"] / 1e6, 2),
        size,
        f"{r['ms_per_image_batch1']:.1f} ({r['cpu_ms_per_image_batch1']:.1f})",
        f"{batched:.1f} ({batched_cpu:.1f})",
        f"{r['auto_ms_per_image']:.1f} ({r['auto_runtime']}, load {r['auto_load_s']:.1f} s)",
        onnx,
        f"{parity[0]:.3g} / {parity[1]:.1e}" if parity else "-",
    ]


def collect_quality(pattern: str) -> dict:
    """{model: {budget: {"seeds": {seed: figures}, "mean_final_map50", "n", ...}}}, from the
    runs' own records (the model from ``--set model.name=...``, the budget from ``--minutes``);
    a file name's tag after ``m<M>-`` (e.g. ``1core``) says the conditions."""
    out: dict = {}
    for path in sorted((BENCH_DIR / "results").glob(pattern)):
        found = re.fullmatch(r"quality-models-m([\d.]+)-(?:(\w+core)-)?(.+?)(?:-seed\d+)?\.json",
                             path.name)  # fmt: skip
        if not found:
            continue
        data = json.loads(path.read_text())
        model = _set_model(data.get("set", [])) or found[3]
        budget = f"{float(found[1]):g} min" + (f", {found[2]}" if found[2] else "")
        for run in data.get("runs", []):
            entry = out.setdefault(model, {}).setdefault(budget, {"seeds": {}})
            holdout = run.get("holdout") or {}
            entry["seeds"][str(run["seed"])] = {
                "final_map50": run.get("final_map50"),
                "best_map50": run.get("best_map50"),
                "best_epoch": run.get("best_epoch"),
                "epochs": run.get("epochs"),
                "train_images_per_s": run.get("train_images_per_s"),
                "holdout_best_map50": (holdout.get("best") or {}).get("map_50"),
                "holdout_last_map50": (holdout.get("last") or {}).get("map_50"),
                "holdout_images": holdout.get("images"),
                "load_avg": data.get("environment", {}).get("load_avg_1m"),
            }
    for budgets in out.values():
        for entry in budgets.values():
            for key in ("final_map50", "best_map50", "holdout_best_map50", "holdout_last_map50"):
                values = [s[key] for s in entry["seeds"].values() if s[key] is not None]
                entry[f"mean_{key}"] = statistics.fmean(values) if values else None
            entry["n"] = len(entry["seeds"])
    return out


def _set_model(items: list[str]) -> str | None:
    for item in items:
        key, _, value = item.partition("=")
        if key == "model.name":
            return value.strip("'\"")
    return None


def quality_table(quality: dict) -> None:
    rows = []
    for model, budgets in quality.items():
        for budget, entry in sorted(budgets.items()):
            seeds = sorted(entry["seeds"].items())
            rows.append(
                [
                    model,
                    budget,
                    " / ".join(_fmt(v["final_map50"]) for _, v in seeds),
                    _fmt(entry["mean_final_map50"]),
                    _fmt(entry["mean_best_map50"]),
                    _fmt(entry["mean_holdout_last_map50"]),
                    _fmt(entry["mean_holdout_best_map50"]),
                    " / ".join(str(v["epochs"]) for _, v in seeds),
                ]
            )
    if rows:
        print_table(
            ("model", "budget", "final val mAP@0.5 per seed", "mean final", "mean best-on-val",
             "holdout: final", "holdout: best-on-val", "epochs"),
            rows,
            title="From scratch on the sample (bench_quality.py runs; holdout: images set aside)",
        )  # fmt: skip


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
