"""The whole loop learns: from scratch, on the demo data, val mAP@0.5 climbs well above zero.

None of the existing gun-detection pipelines check this. The budget is fixed (16 epochs of
32 images, seed 0, CPU); if data, model, loss, optimizer or evaluation break, mAP stays near 0.
"""

import pytest
from helpers import tiny_config

from gunctl.config import IngestConfig, Layout, SplitConfig
from gunctl.core.ingest import ingest
from gunctl.core.split import create_split
from gunctl.core.trainer import fit


@pytest.mark.slow
def test_training_from_scratch_learns_the_demo_data(tmp_path):
    layout = Layout(tmp_path / "artifacts")
    ingest(IngestConfig(source="demo", count=40, seed=0, layout=layout))
    create_split(SplitConfig(layout=layout))
    config = tiny_config(
        layout,
        {"min_size": 160, "max_size": 272, "box_head_dim": 1024},  # torchvision's box head
        epochs=16,
        lr=1e-3,
        lr_schedule="cosine",
        warmup_steps=8,
    )
    result = fit(config)
    print("val mAP@0.5 per epoch:", [round(r["val"]["map_50"], 3) for r in result.history])
    maps = [record["val"]["map_50"] for record in result.history]
    assert maps[0] < 0.1  # an untrained detector finds nothing
    # Seed 0 on this project's CPU reaches 0.60 (epochs 11-16: 0.38 0.43 0.60 0.36 0.25 0.39);
    # a broken loop stays at 0. The bar leaves room for other CPUs' floating-point paths.
    assert result.best_metric >= 0.3, maps
    assert sum(m >= 0.2 for m in maps[-6:]) >= 3, maps  # learnt, not one lucky epoch
    assert result.history[-1]["train"]["loss"] < result.history[0]["train"]["loss"]
