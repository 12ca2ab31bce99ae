"""bf16 autocast on the CPU at inference: val mAP@0.5 and detection time against fp32.

For each trained checkpoint (``--run ROOT/CHECKPOINT``: ROOT an output root holding the run's
``raw`` tree and ``splits/split.json``, as ``bench_quality`` leaves each fold), ``gunctl
validate``'s own code (``validate_checkpoint``, torch runtime, batch 1, no workers) scores the
split's val part three ways: fp32; bf16 autocast around the backbone only (what training's
``--amp`` does on such a CPU: the RPN, heads and box arithmetic in fp32); bf16 autocast around
the whole forward. Printed: mAP@0.5 and each variant's difference to fp32 (the same images,
so the difference is paired), and the detection time per image.

    .venv/bin/python benchmarks/bench_bf16.py --run /tmp/fold0/best.pth --run /tmp/fold1/best.pth
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from _common import base_parser, environment, print_table, write_json


def score(checkpoint: Path, root: Path, mode: str) -> dict:
    import torch

    from gunctl.config import Layout, ValidateConfig
    from gunctl.core import engine, validate

    original = validate._model

    def model_with_bf16_backbone(*args):
        model = original(*args)
        engine._bf16_backbone(model).__enter__()  # for this model's life (one score)
        return model

    config = ValidateConfig(
        checkpoint=checkpoint,
        layout=Layout(root),
        part="val",
        batch_size=1,
        workers=0,
        device="cpu",
        runtime="torch",
    )
    whole = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16 all" else None
    try:
        if mode == "bf16 backbone":
            validate._model = model_with_bf16_backbone
        with whole or contextlib.nullcontext():
            metrics = validate.validate_checkpoint(config).metrics
    finally:
        validate._model = original
    return {
        "mode": mode,
        "map_50": metrics["map_50"],
        "images": metrics.get("images"),
        "ms_img": 1000 * metrics["seconds"] / max(metrics.get("images") or 1, 1),
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    figures = {"environment": environment(), "runs": []}
    rows = []
    for checkpoint in args.run:
        scores = [
            score(checkpoint, checkpoint.parent, m) for m in ("fp32", "bf16 backbone", "bf16 all")
        ]
        base = scores[0]["map_50"]
        for s in scores:
            s["diff"] = s["map_50"] - base
            rows.append([str(checkpoint), s["mode"], s["map_50"], s["diff"], s["ms_img"]])
        figures["runs"].append({"checkpoint": str(checkpoint), "scores": scores})
        print(rows[-3:], flush=True)
    print_table(
        ["checkpoint", "mode", "mAP@0.5", "vs fp32", "ms/img"], rows, title="bf16 on the CPU"
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
