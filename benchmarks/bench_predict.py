"""``gunctl predict`` throughput versus a bare ``model.eval()`` loop, and video frames/s.

Nothing is trained: ``bench_validate.write_checkpoint`` writes a randomly initialised model at
gunctl's default settings (or ``--checkpoint`` names a real one).

- Images: ``gunctl.core.predict.predict`` (what ``gunctl predict`` calls) over the sample's
  ``Images/`` folder, timed from its first batch to its last file written (decoding in
  DataLoader workers, detection, JSONL, and, unless ``--no-save-images``, drawing and
  encoding the annotated copies), against the bare loop: PIL decode, scale to [0, 1],
  ``model(batch)`` under ``torch.inference_mode``, same images, batch size, device, autocast
  and channels-last, nothing written. Ratio = predict img/s / bare img/s (target >= 1.0).
- Video: a generated 640x360 H.264 clip; decoding alone with PyAV and with OpenCV, and
  ``predict`` on it (frames/s, annotated video written).
- ``--gpu``: the image comparison at batch 1 and 16 on CUDA (bf16 autocast, channels-last);
  ``--cpu-smoke`` runs the same code on the CPU with 8 images, to check the script works.

    .venv/bin/python benchmarks/bench_predict.py [--images N] [--json FILE]
    .venv/bin/python benchmarks/bench_predict.py --gpu [--json FILE]
    .venv/bin/python benchmarks/bench_predict.py --gpu --cpu-smoke
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from _common import base_parser, environment, print_table, write_json
from bench_validate import bare_model, decode, resolve_device, write_checkpoint


def bare_loop(model, paths: list[Path], batch_size: int, device, amp: bool) -> float:
    """Images/s of decode + forward, nothing else."""
    import contextlib

    import torch

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    tick = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        images = [image.to(device) for image in decode(paths[start : start + batch_size])]
        with torch.inference_mode(), autocast:
            model(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(paths) / (time.perf_counter() - tick)


def gunctl_predict(checkpoint: Path, sources: list[Path], out: Path, args, batch_size: int):
    from gunctl.config import PredictConfig
    from gunctl.core.predict import predict

    config = PredictConfig(
        sources=tuple(str(s) for s in sources),
        checkpoint=checkpoint,
        out=out,
        batch_size=batch_size,
        workers=args.workers,
        device=args.device,
        save_images=args.save_images,
    )
    return predict(config)


def image_rows(checkpoint, paths, folder, tmp, args, batch_sizes) -> list[dict]:
    import torch

    device = resolve_device(args.device)
    model = bare_model(checkpoint, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for batch_size in batch_sizes:
        bare_loop(model, paths[: 2 * batch_size], batch_size, device, amp=True)  # warm-up
        bare = bare_loop(model, paths, batch_size, device, amp=True)
        result = gunctl_predict(checkpoint, [folder], tmp / f"out-{batch_size}", args, batch_size)
        rows.append(
            {
                "batch_size": batch_size,
                "images": result.images,
                "predict_images_per_s": result.images_per_s,
                "bare_images_per_s": bare,
                "ratio": result.images_per_s / bare,
                "device": str(device),
            }
        )
    print_table(
        ["batch", "images", "predict img/s", "bare img/s", "ratio"],
        [
            [
                r["batch_size"],
                r["images"],
                r["predict_images_per_s"],
                r["bare_images_per_s"],
                r["ratio"],
            ]
            for r in rows
        ],
        title=f"images ({rows[0]['device']}, annotated copies "
        f"{'written' if args.save_images else 'not written'})",
    )
    return rows


def make_clip(path: Path, frames: int, width: int = 640, height: int = 360) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)
            pixels[100:200, (8 * i) % (width - 120) :][:, :120] = (220, 200, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decode_rates(clip: Path) -> dict:
    from gunctl.core.video import frames

    tick = time.perf_counter()
    count = sum(1 for _ in frames(clip))
    pyav = count / (time.perf_counter() - tick)
    rates = {"frames": count, "pyav_frames_per_s": pyav, "opencv_frames_per_s": None}
    try:
        import cv2
    except ImportError:
        return rates
    capture = cv2.VideoCapture(str(clip))
    tick, count = time.perf_counter(), 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        count += 1
    capture.release()
    rates["opencv_frames_per_s"] = count / (time.perf_counter() - tick)
    return rates


def main() -> None:
    from gunctl.config import PredictConfig

    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="a real checkpoint instead")
    parser.add_argument("--images", type=int, default=300, help="the first N sample images")
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size)
    parser.add_argument("--workers", type=int, default=PredictConfig().workers)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--frames", type=int, default=100, help="frames of the generated clip")
    parser.add_argument("--no-save-images", dest="save_images", action="store_false")
    parser.add_argument("--gpu", action="store_true", help="batch 1 and 16 on CUDA")
    parser.add_argument("--cpu-smoke", action="store_true", help="--gpu's code on the CPU, tiny")
    parser.add_argument("--skip-video", action="store_true")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.images, args.frames, args.device = 8, 10, "cpu"
    elif args.gpu:
        args.device = "cuda"
    all_paths = sorted((args.data / "Images").iterdir())[: args.images]
    figures: dict = {"environment": environment(), "args": vars(args) | {"data": str(args.data)}}
    with tempfile.TemporaryDirectory(prefix="gunctl-bench-predict-") as name:
        tmp = Path(name)
        folder = tmp / "images"
        folder.mkdir()
        for path in all_paths:
            shutil.copyfile(path, folder / path.name)  # a copy: predict skips symlinks out
        paths = sorted(folder.iterdir())
        checkpoint = args.checkpoint or write_checkpoint(tmp / "ckpt.pth", None)
        batches = [1, 16] if args.gpu else [args.batch_size]
        figures["images"] = image_rows(checkpoint, paths, folder, tmp, args, batches)
        if not args.skip_video:
            clip = make_clip(tmp / "clip.mp4", args.frames)
            rates = decode_rates(clip)
            result = gunctl_predict(checkpoint, [clip], tmp / "out-video", args, args.batch_size)
            rates["predict_frames_per_s"] = result.images_per_s
            figures["video"] = rates
            print_table(
                ["frames", "PyAV decode f/s", "OpenCV decode f/s", "predict f/s"],
                [
                    [
                        rates["frames"],
                        rates["pyav_frames_per_s"],
                        rates["opencv_frames_per_s"],
                        rates["predict_frames_per_s"],
                    ]
                ],
                title="640x360 H.264 clip",
            )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
