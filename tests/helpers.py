"""Helpers for building test data (imported by tests; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def jpeg_bytes(width: int = 64, height: int = 48, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    colour = 128 if mode in ("L", "P") else (120,) * len(mode)
    Image.new(mode, (width, height), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tree(root: Path, images: dict[str, bytes], labels: dict[str, str | bytes]) -> Path:
    """A folder in the Kaggle layout: Images/<name> and Labels/<name>."""
    (root / "Images").mkdir(parents=True, exist_ok=True)
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (root / "Images" / name).write_bytes(data)
    for name, text in labels.items():
        data = text.encode() if isinstance(text, str) else text
        (root / "Labels" / name).write_bytes(data)
    return root


TINY_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
TINY_HEAD = 64  # box head width: 6 million parameters instead of 19, checkpoints 3x smaller


def tiny_config(layout, model_overrides: dict | None = None, **overrides):
    """A TrainConfig that trains in seconds on the CPU: small model, small images, no workers."""
    from gunctl.config import ModelConfig, TrainConfig

    model = ModelConfig(
        **{
            "name": TINY_MODEL,
            "weights": "none",
            "min_size": 128,
            "max_size": 224,
            "rpn_pre_nms_top_n_train": 200,
            "rpn_post_nms_top_n_train": 100,
            "rpn_pre_nms_top_n_test": 100,
            "rpn_post_nms_top_n_test": 50,
            "box_batch_size_per_image": 64,
            "box_head_dim": TINY_HEAD,
            **(model_overrides or {}),
        }
    )
    values = dict(
        model=model,
        layout=layout,
        epochs=1,
        batch_size=4,
        lr=1e-3,
        workers=0,
        lr_schedule="constant",
        warmup_steps=2,
        log_images=2,
        run_name="tiny",
        recipe="plain",  # gunctl's behaviour before recipes; tests of recipes set their own
    )
    values.update(overrides)
    return TrainConfig(**values)


TINY_CLI = [
    "--model",
    TINY_MODEL,
    "--weights",
    "none",
    "--box-head-dim",
    str(TINY_HEAD),
    "--min-size",
    "128",
    "--max-size",
    "224",
    "--workers",
    "0",
    "--batch-size",
    "4",
    "--lr",
    "1e-3",
]


def run_gunctl(*args, env: dict | None = None, timeout: float = 600):
    """`python -m gunctl ARGS` in a real process (what users and torchrun run)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "gunctl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def share_data(out, source):
    """A fresh output root that reuses ``source``'s ingested data and split (symlinks)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("raw", "splits"):
        (out / name).symlink_to(source / name)
    return out


def start_long_training(out, run_name: str, timeout: float = 180):
    """A real `gunctl train` process of many epochs, returned once its first checkpoint is
    written: (process, path of last.pth)."""
    import os
    import subprocess
    import sys
    import time

    command = [
        sys.executable,
        "-m",
        "gunctl",
        "train",
        "--epochs",
        "50",
        "--out",
        str(out),
        "--run-name",
        run_name,
        "--lr-schedule",
        "constant",
        *TINY_CLI,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    last = out / "runs" / run_name / "last.pth"
    deadline = time.monotonic() + timeout
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    if not last.exists():
        process.kill()
        raise AssertionError(
            f"no checkpoint after the first epoch: {process.communicate()[1][-2000:]}"
        )
    return process, last


def tiny_checkpoint(
    path: Path, metrics: dict | None = None, seed: int = 0, with_optimizer: bool = False
) -> Path:
    """A gunctl checkpoint of an untrained tiny model (no training: fast), as train writes it
    (weights, config, class names, metrics), with Adam's state after one step if asked."""
    import torch

    from gunctl.config import CLASS_NAMES, Layout, to_dict
    from gunctl.core.checkpoint import save_checkpoint
    from gunctl.core.model import build_model

    config = tiny_config(Layout(path.parent))
    torch.manual_seed(seed)
    model = build_model(config.model).model
    _calibrate_frozen_batchnorm(model)
    stored = to_dict(config)
    stored.pop("layout")
    payload = {
        "model": model.state_dict(),
        "epoch": 1,
        "config": stored,
        "class_names": list(CLASS_NAMES),
        "run_name": "tiny",
        "weights_origin": "none",
        "metrics": metrics,
    }
    if with_optimizer:
        optimizer = torch.optim.Adam(model.parameters())
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()  # creates the moments, as after a real step
        payload["optimizer"] = optimizer.state_dict()
    save_checkpoint(path, payload)
    return path


def _calibrate_frozen_batchnorm(model) -> None:
    """Set each BatchNorm layer's statistics to those of its input on a few random images.

    At random init, the backbone (BatchNorm in eval mode, unit statistics) shrinks activations
    to ~1e-8, so every box gets the same score; calibrated (a data-dependent init), scores
    spread as a trained model's do.
    """
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    def calibrate(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)) + 1e-5)

    hooks = [
        m.register_forward_pre_hook(calibrate)
        for m in model.modules()
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.modules.batchnorm._BatchNorm))
    ]
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 160, 240, generator=generator) for _ in range(2)]
    model.eval()
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()


# A sweep trial in seconds: the tiny model at 64 px on a 12-image subset, one process.
TINY_TRIAL = {
    "model": TINY_MODEL,
    "weights": "none",
    "box_head_dim": TINY_HEAD,
    "min_size": 64,
    "max_size": 96,
    "workers": 0,
    "batch_size": 4,
    "recipe": "plain",
    "subset": 12,
    "lr_schedule": "constant",
}
