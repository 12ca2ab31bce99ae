"""Faster R-CNN training and eval throughput on one CUDA GPU: precision x batch x memory format.

Self-contained (imports only torch, torchvision, PIL and numpy; no gunctl), so it runs on a
rented GPU machine as it is. For each configuration of

    precision       fp32, bf16 (torch.autocast)
    channels_last   off, on (model.to(memory_format=torch.channels_last))
    batch size      2, 8, 16

it times training steps (forward, loss sum, backward, Adam step) and eval-mode inference
(``torch.inference_mode``) of ``fasterrcnn_resnet50_fpn`` (weights None, weights_backbone
None, 2 classes) at min_size 800 / max_size 1333 and torchvision's default proposal counts:
3 warm-up steps, then 10 timed steps between ``torch.cuda.synchronize()`` calls. Each row
also shows the peak GPU memory (``torch.cuda.max_memory_allocated``).

Images are real ones from ``--data`` (Kaggle layout, decoded once with PIL, kept on the GPU,
targets from the label files) or synthetic 3x180x280 ones when there is no such folder. Every
configuration starts from the same initial weights. A CUDA out-of-memory error is recorded
for its configuration and the run goes on; once ``--max-seconds`` have passed the remaining
configurations are skipped. The JSON (rewritten after every configuration, so a run that is
cut short keeps what it measured) goes to ``$OUT/gpu_bench.json`` when OUT is set, and to
``--json FILE``.

    python benchmarks/gpu_bench.py                       # on the GPU machine, ~3-4 minutes
    python benchmarks/gpu_bench.py --batch-sizes 2,8 --precisions bf16
    python benchmarks/gpu_bench.py --cpu-smoke           # check the code path on a CPU
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

STARTED = time.perf_counter()
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "guns-sample"
SYNTHETIC_SIZE = (180, 280)  # the data set's typical image size (height, width)


# --- data --------------------------------------------------------------------------------------


def read_label(path: Path) -> list[list[float]]:
    """Kaggle label file: the box count on line 1, then one ``x1 y1 x2 y2`` line per box."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [[float(v) for v in line[:4]] for line in lines[1:] if len(line) >= 4]


def load_real(folder: Path, limit: int) -> list[tuple[torch.Tensor, dict]]:
    """Up to ``limit`` images with their boxes, decoded once with PIL (float32, [0, 1])."""
    import numpy as np
    from PIL import Image

    items = []
    for image_path in sorted((folder / "Images").iterdir(), key=_numeric_key):
        label_path = folder / "Labels" / f"{image_path.stem}.txt"
        if not label_path.is_file():
            continue
        with Image.open(image_path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        boxes = _clip(read_label(label_path), tensor.shape[2], tensor.shape[1])
        items.append((tensor, _target(boxes)))
        if len(items) == limit:
            break
    return items


def synthetic(count: int, seed: int = 0) -> list[tuple[torch.Tensor, dict]]:
    """Random 3x180x280 images with one to three random boxes each."""
    generator = torch.Generator().manual_seed(seed)
    height, width = SYNTHETIC_SIZE
    items = []
    for _ in range(count):
        image = torch.rand(3, height, width, generator=generator)
        boxes = []
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            x1, y1 = torch.rand(2, generator=generator) * torch.tensor([width / 2, height / 2])
            w, h = 20 + torch.rand(2, generator=generator) * 60
            boxes.append([float(x1), float(y1), float(x1 + w), float(y1 + h)])
        items.append((image, _target(boxes)))
    return items


def _clip(boxes: list[list[float]], width: int, height: int) -> list[list[float]]:
    kept = []
    for x1, y1, x2, y2 in boxes:
        x1, x2 = sorted((min(max(x1, 0), width), min(max(x2, 0), width)))
        y1, y2 = sorted((min(max(y1, 0), height), min(max(y2, 0), height)))
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            kept.append([x1, y1, x2, y2])
    return kept


def _target(boxes: list[list[float]]) -> dict:
    tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": tensor, "labels": torch.ones(len(tensor), dtype=torch.int64)}


def _numeric_key(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def to_device(items, device):
    return [(image.to(device), {k: v.to(device) for k, v in t.items()}) for image, t in items]


def batch(items, size: int, step: int):
    """The ``step``-th batch of ``size`` items, cycling through the data."""
    chosen = [items[(step * size + i) % len(items)] for i in range(size)]
    return [image for image, _ in chosen], [target for _, target in chosen]


# --- model and timing --------------------------------------------------------------------------


def build_model(args, device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=2,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    return model.to(device)


def autocast(device, precision: str):
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_train(model, items, size: int, precision: str, args, device) -> dict:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(index: int) -> float:
        images, targets = batch(items, size, index)
        with autocast(device, precision):
            losses = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        losses.backward()
        optimizer.step()
        return losses

    try:
        return _timed(step, size, args, device)
    finally:
        optimizer.zero_grad(set_to_none=True)  # frees the gradients before the next run


def time_eval(model, items, size: int, precision: str, args, device) -> dict:
    model.eval()

    def step(index: int):
        images, _ = batch(items, size, index)
        with torch.inference_mode(), autocast(device, precision):
            return model(images)

    return _timed(step, size, args, device)


def _timed(step, size: int, args, device) -> dict:
    """Warm-up steps, then timed steps between synchronisations; peak memory over both."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index in range(args.warmup):
        step(index)
    synchronize(device)
    tick = time.perf_counter()
    for index in range(args.warmup, args.warmup + args.steps):
        result = step(index)
    synchronize(device)
    seconds = time.perf_counter() - tick
    if isinstance(result, torch.Tensor) and not torch.isfinite(result):
        raise FloatingPointError(f"non-finite loss {float(result)}")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "images_per_s": size * args.steps / seconds,
        "seconds_per_step": seconds / args.steps,
        "peak_gib": peak,
    }


def guarded(measure, device) -> dict:
    """Run one measurement; an OOM (or another error) becomes a row, not the end of the run."""
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        return {"error": "OOM"}
    except (RuntimeError, FloatingPointError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def set_memory_format(model, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)


# --- the run -------------------------------------------------------------------------------


def configurations(args) -> list[dict]:
    return [
        {"precision": precision, "channels_last": layout == "on", "batch_size": size}
        for precision in args.precisions
        for layout in args.channels_last
        for size in args.batch_sizes
    ]


def run(args, device, items, report: dict) -> None:
    model = build_model(args, device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for config in configurations(args):
        row = dict(config)
        if time.perf_counter() - STARTED > args.max_seconds:
            row["skipped"] = f"--max-seconds {args.max_seconds} reached"
        else:
            model.load_state_dict(initial)
            set_memory_format(model, config["channels_last"])
            common = (model, items, config["batch_size"], config["precision"], args, device)
            row["train"] = guarded(functools.partial(time_train, *common), device)
            model.load_state_dict(initial)  # eval the same weights in every configuration
            row["eval"] = guarded(functools.partial(time_eval, *common), device)
        report["rows"].append(row)
        print_row(row)
        save(report, args)


def environment(device, data_label: str, args) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "data": data_label,
        "min_size": args.min_size,
        "max_size": args.max_size,
        "warmup": args.warmup,
        "steps": args.steps,
    }
    if device.type == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(device),
            cudnn=torch.backends.cudnn.version(),
            allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            allow_tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return info


def print_header() -> None:
    print(
        f"{'precision':9}  {'ch_last':7}  {'batch':>5}  {'train img/s':>11}  {'train GiB':>9}"
        f"  {'eval img/s':>10}  {'eval GiB':>8}",
        flush=True,
    )


def print_row(row: dict) -> None:
    head = f"{row['precision']:9}  {'on' if row['channels_last'] else 'off':7}  "
    head += f"{row['batch_size']:>5}"
    if "skipped" in row:
        print(f"{head}  skipped ({row['skipped']})", flush=True)
        return
    print(f"{head}  {_cells(row['train'], 11, 9)}  {_cells(row['eval'], 10, 8)}", flush=True)


def _cells(result: dict, width: int, mem_width: int) -> str:
    if "error" in result:
        return f"{result['error'][:width]:>{width}}  {'-':>{mem_width}}"
    peak = result["peak_gib"]
    memory = f"{peak:.2f}" if peak is not None else "-"
    return f"{result['images_per_s']:>{width}.1f}  {memory:>{mem_width}}"


def save(report: dict, args) -> None:
    report["elapsed_seconds"] = time.perf_counter() - STARTED
    targets = [Path(args.json)] if args.json else []
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / "gpu_bench.json")
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder")
    parser.add_argument("--synthetic", action="store_true", help="synthetic images even so")
    parser.add_argument("--max-images", type=int, default=64, help="real images decoded")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--batch-sizes", type=_ints, default=[2, 8, 16])
    parser.add_argument("--precisions", type=_words, default=["fp32", "bf16"])
    parser.add_argument("--channels-last", type=_words, default=["off", "on"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=200.0, help="then skip the rest")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="one tiny configuration on the CPU at 128 px"
    )
    args = parser.parse_args()
    if args.cpu_smoke:
        args.min_size, args.max_size = 128, 214
        args.batch_sizes, args.precisions, args.channels_last = [2], ["fp32"], ["off"]
        args.warmup, args.steps = 1, 2
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main() -> None:
    args = parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit(
            "gpu_bench: no CUDA GPU here (torch.cuda.is_available() is False). Run it on a GPU "
            "machine, or pass --cpu-smoke to check the code path on the CPU."
        )
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    real = not args.synthetic and (args.data / "Images").is_dir()
    items = load_real(args.data, args.max_images) if real else synthetic(args.max_images)
    label = f"{args.data} ({len(items)} images)" if real else f"synthetic ({len(items)} images)"
    items = to_device(items, device)
    report = {"environment": environment(device, label, args), "rows": []}
    print(json.dumps(report["environment"]), flush=True)
    print_header()
    run(args, device, items, report)
    save(report, args)
    print(f"done in {time.perf_counter() - STARTED:.0f} s", flush=True)


if __name__ == "__main__":
    main()
