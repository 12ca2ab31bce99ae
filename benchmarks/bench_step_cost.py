"""CPU seconds per training step of a recipe's model, for choosing what a time budget buys.

Builds the model a recipe resolves to (``--recipe``, changed with ``--set KEY=VALUE`` as a
user's flag would), and the optimizer gunctl makes for it, then times a few training steps on
real images of the sample with their real boxes (the recipe's batch size, 2 on the CPU unless
``batch_size=N`` is set; sizes drawn as in training). CPU seconds (``time.process_time``, one
thread unless ``--threads``), not wall time: load on the machine changes little. Each variant
prints CPU-s per step and per image, split into forward and backward + optimizer.

    .venv/bin/python benchmarks/bench_step_cost.py                  # the scratch recipe
    .venv/bin/python benchmarks/bench_step_cost.py --variant "" \
        --variant "model.fpn_channels=256 model.box_head_dim=1024"  # one line per variant
    .venv/bin/python benchmarks/bench_step_cost.py --variant "" --variant "batch_size=4"
    .venv/bin/python benchmarks/bench_step_cost.py --variant "" --variant "amp=False"  # fp32
    .venv/bin/python benchmarks/bench_step_cost.py --recipe plain
"""

from __future__ import annotations

import ast
import contextlib
import random
import time
from pathlib import Path

from _common import base_parser, environment, write_json


def parse_values(text: str) -> dict:
    values = {}
    for item in text.split():
        key, _, raw = item.partition("=")
        try:
            values[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            values[key] = raw
    return values


def config_for(recipe: str, values: dict):
    from gunctl.config import ModelConfig, TrainConfig
    from gunctl.core import recipes

    model = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model.")}
    top = {k: v for k, v in values.items() if "." not in k}
    config = TrainConfig(
        model=ModelConfig(**{"weights": "none", **model}),
        recipe=recipe,
        explicit=tuple(values),
        **top,
    )
    return recipes.resolve(config)


def fitted(config, pool):
    """The recipe's anchors fitted to the pool's boxes, as training fits them."""
    from gunctl.core import recipes

    if not config.fit_anchors:
        return config
    return recipes.fit_anchors(config, [(t["boxes"], tuple(p.shape[-2:])) for p, t in pool])


def load_batch_pool(data: Path, count: int):
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    pool = []
    for label in sorted((data / "Labels").glob("*.txt"))[:count]:
        lines = label.read_text().split("\n")
        boxes = [[float(v) for v in line.split()] for line in lines[1 : 1 + int(lines[0])]]
        with Image.open(data / "Images" / f"{label.stem}.jpeg") as image:
            pixels = pil_to_tensor(image.convert("RGB")).float() / 255
        target = {"boxes": torch.tensor(boxes), "labels": torch.ones(len(boxes), dtype=torch.int64)}
        pool.append((pixels, target))
    return pool


def measure(config, pool, steps: int, warmup: int) -> dict:
    import torch

    from gunctl.core.engine import _bf16_backbone, cpu_bf16_backbone
    from gunctl.core.model import build_model
    from gunctl.core.optim import make_optimizer

    torch.manual_seed(0)
    model = build_model(config.model).model.train()
    optimizer = make_optimizer(model, config)
    rng = random.Random(0)
    batch_size = config.batch_size or 2  # the CPU's default
    bf16 = cpu_bf16_backbone(config.amp, torch.device("cpu"))  # as training does (amp=False: not)
    forward = backward = 0.0
    for step in range(warmup + steps):
        batch = rng.sample(pool, batch_size)
        started = time.process_time()
        with _bf16_backbone(model) if bf16 else contextlib.nullcontext():
            losses = model([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        middle = time.process_time()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= warmup:
            forward += middle - started
            backward += time.process_time() - middle
    return {
        "cpu_s_per_step": (forward + backward) / steps,
        "forward": forward / steps,
        "backward_and_optimizer": backward / steps,
        "cpu_s_per_image": (forward + backward) / steps / batch_size,
        "batch_size": batch_size,
        "bf16_backbone": bf16,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    import torch

    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="scratch", choices=["scratch", "finetune", "plain"])
    parser.add_argument(
        "--variant", action="append", default=None, help='"KEY=VALUE KEY=VALUE", repeatable'
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="wall seconds are CPU-s / threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = load_batch_pool(args.data, 40)
    rows = []
    for text in args.variant or [""]:
        config = fitted(config_for(args.recipe, parse_values(text)), pool)
        figures = measure(config, pool, args.steps, args.warmup)
        m = config.model
        rows.append({"recipe": args.recipe, "variant": text or "(as resolved)", **figures})
        print(
            f"{args.recipe} {text or '(as resolved)'}: {m.name} {m.norm} levels "
            f"{m.fpn_levels or 'all'} {m.min_size}/{m.max_size} px, train sizes "
            f"{m.train_sizes or 'fixed'}, widths {m.fpn_channels}/{m.box_head_dim}, "
            f"{config.optimizer}, batch {figures['batch_size']}"
            f"{', bf16 backbone' if figures['bf16_backbone'] else ''}: "
            f"{figures['cpu_s_per_step']:.2f} "
            f"CPU-s per step, {figures['cpu_s_per_image']:.3f} per image "
            f"(forward {figures['forward']:.2f}, backward + optimizer "
            f"{figures['backward_and_optimizer']:.2f}), {figures['parameters_m']:.1f} M params",
            flush=True,
        )
    write_json(args.json, {"environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
