"""ms per image of each inference runtime, bare and through ``gunctl predict``, per family.

For each checkpoint (``--checkpoint``, repeatable; default: an untrained model of each family
at its scratch recipe's size, written by gunctl's checkpoint writer) and each thread count in
``--threads``:

- bare loops, batch 1, on ``--images`` of the sample's images (decoded once): torch fp32,
  torch under CPU autocast bf16, the in-memory ONNX graph in onnxruntime, the same graph in
  OpenVINO (f32, and bf16 for information: it fails the parity check); each the backend's
  ``run`` that ``Detector.detect`` calls, after ``--warmup`` runs; for a fixed-size family
  (SSDlite) also onnxruntime and OpenVINO given four images per call (their second graph);
- ``gunctl predict`` on the whole folder with ``--runtime torch|onnx|openvino|auto``
  (OMP_NUM_THREADS set to the thread count; ``--batch-size`` as given, else predict's own):
  its images/s (first image to last) and the command's wall time (start-up, the export and
  the parity check included);
- the load time of each runtime (trace, compile, parity check) and what ``auto`` chose;
- the same torch loop on a worker thread instead of the main thread (predict detects on the
  main thread; an earlier note saw 5-20x differences under heavy load).

    .venv/bin/python benchmarks/bench_runtimes.py --threads 1 --json runtimes.json
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import base_parser, environment, print_table, summary, write_json

FAMILIES = (
    "fasterrcnn_resnet18_fpn",
    "retinanet_resnet18_fpn",
    "fcos_resnet18_fpn",
    "ssdlite320_mobilenet_v3_large",
)


def untrained_checkpoint(family: str, path: Path) -> Path:
    """An untrained model at the scratch recipe's settings, saved as train saves one."""
    import torch

    from gunctl.config import CLASS_NAMES, ModelConfig, TrainConfig, to_dict
    from gunctl.core.checkpoint import save_checkpoint
    from gunctl.core.model import build_model
    from gunctl.core.recipes import resolve

    config = resolve(TrainConfig(model=ModelConfig(name=family, weights="none")))
    torch.manual_seed(0)
    model = build_model(config.model).model
    stored = to_dict(config)
    stored.pop("layout")
    payload = {
        "model": model.state_dict(),
        "epoch": 0,
        "config": stored,
        "class_names": list(CLASS_NAMES),
        "run_name": "bench-runtimes",
        "weights_origin": "none",
    }
    save_checkpoint(path, payload)
    return path


def decoded(folder: Path, count: int):
    from torchvision.io import ImageReadMode, decode_image, read_file

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [decode_image(read_file(str(p)), mode=ImageReadMode.RGB) for p in files[:count]]


def time_loops(loops: dict, images, warmup: int) -> list[dict]:
    """ms per image of each loop, the loops interleaved image by image (in turn first), so that
    a change of load on the machine weighs on each alike."""
    names = list(loops)
    for image in images[:warmup]:
        for name in names:
            loops[name](image)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index, image in enumerate(images):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            loops[name](image)
            times[name].append((time.perf_counter() - started) * 1000)
    return [{"loop": name, **summary(values)} for name, values in times.items()]


def bare(checkpoint: Path, images, args) -> tuple[list[dict], dict]:
    import torch

    from gunctl.core.forward import head_limits
    from gunctl.core.inference import load_detector
    from gunctl.core.runtimes import BACKENDS, Frame, checkpoint_graph, import_runtime

    started = time.perf_counter()
    detector = load_detector(checkpoint, device="cpu", runtime="torch")
    loads = {"torch": time.perf_counter() - started}
    torch_backend = detector._backend
    floor = detector.threshold

    def torch_run(image):
        return torch_backend.run([image], floor, None)

    def bf16_run(image):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch_backend.run([image], floor, None)

    loops = {"torch fp32": torch_run, "torch bf16": bf16_run}
    started = time.perf_counter()
    graph = checkpoint_graph(torch_backend.model, checkpoint)
    frame = Frame(torch_backend.model)
    loads["trace"] = time.perf_counter() - started
    heads_floor = float(head_limits(torch_backend.model).score_thresh)
    batched = {}
    for name in ("onnx", "openvino"):
        module = import_runtime(name, checkpoint, explicit=False)
        if module is None:
            continue
        started = time.perf_counter()
        backend = BACKENDS[name](module, graph, heads_floor, checkpoint, frame)
        loads[name] = time.perf_counter() - started
        loops[name] = lambda image, b=backend: b.run([image], floor, None)
        if backend.batch > 1:
            batched[name] = backend
        if name == "openvino":
            loops["openvino bf16"] = openvino_bf16(module, graph, frame, min(heads_floor, floor))
    pool = ThreadPoolExecutor(1)  # predict detects on the main thread; this on a worker
    loops["torch fp32 (worker thread)"] = lambda image: pool.submit(torch_run, image).result()
    rows = time_loops(loops, images, args.warmup)
    pool.shutdown()
    for name, backend in batched.items():  # a fixed-size family's graph of several images
        rows.append(time_batched(f"{name}, {backend.batch} at a time", backend, images, floor))
    return rows, loads


def time_batched(name: str, backend, images, floor: float) -> dict:
    """ms per image of ``backend.run`` on groups of ``backend.batch`` images (each group's time
    shared out), after one warm-up group."""
    size = backend.batch
    backend.run(images[:size], floor, None)
    times = []
    for start in range(0, len(images) - size + 1, size):
        started = time.perf_counter()
        backend.run(images[start : start + size], floor, None)
        times += [(time.perf_counter() - started) * 1000 / size] * size
    return {"loop": name, **summary(times)}


def openvino_bf16(module, graph, frame, floor: float):
    """The one-image graph in OpenVINO at its default precision on this CPU (bf16), for
    information, on the resized image as the other loops (until 2026-12-06 it was fed the
    decoded image unresized, a smaller input than the model's: its earlier figures are low)."""
    import numpy as np
    import torch

    core = module.Core()
    settings = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(core.read_model(graph.one), "CPU", settings).create_infer_request()
    feed = {"floor": np.asarray(floor, dtype=np.float32)}
    return lambda image: request.infer({"image": frame.resized(image)[None].numpy(), **feed})


def predict(checkpoint: Path, folder: Path, runtime: str, threads: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "gunctl", "predict", str(folder)]
        command += ["--weights", str(checkpoint), "--runtime", runtime, "--device", "cpu"]
        command += ["--out", str(Path(tmp) / "out")]
        command += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        command += ["--no-save-images"] if args.no_save_images else []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - started
    if result.returncode != 0:
        return {"runtime": runtime, "error": result.stderr.strip().splitlines()[-1:]}
    rate = float(re.search(r"images/s:\s*([\d.]+)", result.stdout).group(1))
    ran = re.search(r"runtime:\s*(\S+)", result.stdout)
    return {
        "runtime": runtime,
        "ran": ran.group(1) if ran else "?",
        "img_s": rate,
        "ms_img": 1000 / rate,
        "wall_s": wall,
        "load_1m": load,
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=40, help="images in each bare loop")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-predict", action="store_true", help="bare loops only")
    parser.add_argument(
        "--predict-runtimes", nargs="+", default=["torch", "onnx", "openvino", "auto"]
    )
    parser.add_argument(
        "--no-save-images", action="store_true", help="predict writes predictions.jsonl only"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="predict's --batch-size (default: its own)"
    )
    args = parser.parse_args()
    import torch

    folder = args.data / "Images"
    images = decoded(folder, args.images)
    figures = {"environment": environment(), "runs": []}
    with contextlib.ExitStack() as stack:
        checkpoints = list(args.checkpoint)
        if not checkpoints:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            checkpoints = [untrained_checkpoint(f, tmp / f"{f}.pth") for f in FAMILIES]
        for checkpoint in checkpoints:
            for threads in args.threads:
                torch.set_num_threads(threads)
                load = os.getloadavg()[0]
                rows, loads = bare(checkpoint, images, args)
                run = {"checkpoint": str(checkpoint), "threads": threads, "load_1m": load}
                run.update(bare=rows, load_s=loads)
                title = f"{checkpoint.name}, {threads} thread(s), load {load:.1f}"
                print_table(
                    ["loop", "ms/img median", "min", "max"],
                    [[r["loop"], r["median"], r["min"], r["max"]] for r in rows],
                    title=title,
                )
                print("load seconds:", {k: round(v, 2) for k, v in loads.items()}, flush=True)
                if not args.no_predict:
                    ends = [
                        predict(checkpoint, folder, r, threads, args) for r in args.predict_runtimes
                    ]
                    run["predict"] = ends
                    print_table(
                        ["--runtime", "ran", "img/s", "ms/img", "wall s", "load"],
                        [
                            [
                                e["runtime"],
                                e.get("ran"),
                                e.get("img_s"),
                                e.get("ms_img"),
                                e.get("wall_s"),
                                e.get("load_1m", e.get("error")),
                            ]
                            for e in ends
                        ],
                        title=f"gunctl predict, {title}",
                    )
                figures["runs"].append(run)
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
