"""``gunctl validate`` throughput versus a bare ``model.eval()`` + ``inference_mode`` loop.

Nothing is trained. A checkpoint is written with gunctl's own ``save_checkpoint`` from a
randomly initialised model at gunctl's default settings (or ``--checkpoint`` names a real
one), and scored with ``gunctl.core.validate.validate_checkpoint`` (what ``gunctl validate``
calls) on the val part of the split of the sample. Its metrics give the detection pass's
images/s, the total seconds (loss pass, detection pass, loading, mAP) and the seconds spent on mAP.

The bare loop runs the same images, in the same order and batches, through the same model
(torchvision builder, same settings, same weights): decode with PIL, scale to [0, 1],
``model(batch)`` in eval mode under ``torch.inference_mode``. Decoding and the forward pass
are timed apart. One untimed batch warms the process up before either is measured.

A model at random init emits about as many boxes per image as a trained one is allowed
(``box_detections_per_img``); pass ``--checkpoint`` for a trained model's figures.

    .venv/bin/python benchmarks/bench_validate.py [--json FILE] [--checkpoint PATH]
    .venv/bin/python benchmarks/bench_validate.py --quick   # a 20-image split: 4 val images
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from _common import base_parser, environment, ingest_sample, print_table, write_json


def write_checkpoint(path: Path, min_size: int | None) -> Path:
    """A gunctl checkpoint of a randomly initialised default model, built like
    ``checkpoint.checkpoint_payload`` (the fields ``validate_checkpoint`` reads, plus the usual
    facts)."""
    import torch

    from gunctl.config import CLASS_NAMES, ModelConfig, TrainConfig, to_dict
    from gunctl.core.checkpoint import save_checkpoint
    from gunctl.core.model import build_model

    model_config = ModelConfig(weights="none")
    if min_size is not None:
        model_config = dataclasses.replace(model_config, min_size=min_size)
    torch.manual_seed(0)
    model = build_model(model_config).model
    config = to_dict(TrainConfig(model=model_config))
    config.pop("layout")
    payload = {
        "model": model.state_dict(),
        "epoch": 0,
        "step": 0,
        "config": config,
        "class_names": list(CLASS_NAMES),
        "run_name": "bench-validate",
        "weights_origin": "none",
        "history": [],
    }
    save_checkpoint(path, payload)
    return path


def score_with_gunctl(checkpoint: Path, layout, args) -> dict:
    from gunctl.config import ValidateConfig
    from gunctl.core.validate import validate_checkpoint

    config = ValidateConfig(
        checkpoint=checkpoint,
        layout=layout,
        part="val",
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    tick = time.perf_counter()
    result = validate_checkpoint(config)
    metrics = dict(result.metrics)
    metrics["call_seconds"] = (
        time.perf_counter() - tick
    )  # validate_checkpoint(): model build included
    return metrics


def bare_model(checkpoint: Path, device):
    """The same model as the checkpoint's, built straight from torchvision."""
    import torchvision

    from gunctl.config import model_config_from_dict
    from gunctl.core.checkpoint import load_checkpoint

    stored = load_checkpoint(checkpoint)
    config = model_config_from_dict(stored["config"]["model"])
    builder = getattr(torchvision.models.detection, config.name)
    model = builder(weights=None, weights_backbone=None, num_classes=2, **config.builder_kwargs())
    model.load_state_dict(stored["model"])
    return model.eval().to(device)


def decode(paths: list[Path]):
    """PIL decode, RGB, float32 CxHxW in [0, 1]."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(pil_to_tensor(image.convert("RGB")).float().div_(255))
    return images


def bare_loop(model, paths: list[Path], batch_size: int, device) -> dict:
    import torch

    decode_s = forward_s = 0.0
    for start in range(0, len(paths), batch_size):
        tick = time.perf_counter()
        images = [image.to(device) for image in decode(paths[start : start + batch_size])]
        decode_s += time.perf_counter() - tick
        tick = time.perf_counter()
        with torch.inference_mode():
            model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        forward_s += time.perf_counter() - tick
    count = len(paths)
    return {
        "images": count,
        "decode_seconds": decode_s,
        "forward_seconds": forward_s,
        "images_per_s": count / forward_s,
        "images_per_s_with_decode": count / (decode_s + forward_s),
    }


def warm_up(model, paths: list[Path], batch_size: int, device) -> None:
    bare_loop(model, paths[:batch_size], batch_size, device)


def resolve_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def report(gunctl: dict, bare: dict) -> dict:
    images = gunctl["images"]
    loss_and_load = gunctl["seconds"] - gunctl["detect_seconds"] - gunctl["map_seconds"]
    rows = [
        [
            "gunctl score (validate)",
            images,
            gunctl["images_per_s"],
            images / gunctl["seconds"],
            gunctl["detect_seconds"],
            loss_and_load,
            gunctl["map_seconds"],
        ],
        [
            "bare eval loop",
            bare["images"],
            bare["images_per_s"],
            bare["images_per_s_with_decode"],
            bare["forward_seconds"],
            bare["decode_seconds"],
            None,
        ],
    ]
    print_table(
        [
            "loop",
            "images",
            "detect img/s",
            "overall img/s",
            "detect s",
            "other s",
            "mAP s",
        ],
        rows,
        title="validation throughput",
    )
    print(
        "gunctl: overall = images / score's total seconds; other = loss pass, loading and\n"
        "counting. Bare loop: overall = images / (PIL decode + forward); other = decode only."
    )
    ratios = {
        "detect": gunctl["images_per_s"] / bare["images_per_s"],
        "overall": (images / gunctl["seconds"]) / bare["images_per_s_with_decode"],
    }
    print(f"detection images/s gunctl / bare: {ratios['detect']:.3f}  (target >= 1)")
    print(f"overall images/s gunctl / bare: {ratios['overall']:.3f}")
    print(f"seconds computing mAP: {gunctl['map_seconds']:.3f}")
    return ratios


def main() -> None:
    from gunctl.config import ValidateConfig

    defaults = ValidateConfig()
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="score this one instead")
    parser.add_argument("--min-size", type=int, default=None, help="of the written checkpoint")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="gunctl's loader")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--subset", type=int, default=None, help="split only N images")
    parser.add_argument("--quick", action="store_true", help="--subset 20 (4 val images)")
    args = parser.parse_args()
    if args.quick:
        args.subset = args.subset or 20
    with tempfile.TemporaryDirectory(prefix="gunctl-bench-validate-") as tmp:
        layout, split = ingest_sample(args.data, Path(tmp) / "artifacts", args.subset)
        checkpoint = args.checkpoint or write_checkpoint(Path(tmp) / "ckpt.pth", args.min_size)
        device = resolve_device(args.device)
        model = bare_model(checkpoint, device)
        paths = [layout.raw / "Images" / item["image"] for item in split["val"]]
        warm_up(model, paths, args.batch_size, device)
        gunctl = score_with_gunctl(checkpoint, layout, args)
        bare = bare_loop(model, paths, args.batch_size, device)
    print(f"checkpoint: {args.checkpoint or 'random init, gunctl defaults'}; device {device}")
    ratios = report(gunctl, bare)
    figures = {
        "environment": environment(),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "gunctl": gunctl,
        "bare": bare,
        "ratios": ratios,
    }
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
