"""The training and validation displays show each detector family's own losses (issue 28)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

RECORD = {
    "epoch": 1,
    "lr": 1e-3,
    "seconds": 2.0,
    "train": {
        "loss": 1.5,
        "loss_classification": 1.0,
        "loss_bbox_regression": 0.5,
        "images_per_s": 3.0,
    },
    "val": {
        "loss": 1.2,
        "loss_classification": 0.7,
        "loss_bbox_regression": 0.5,
        "map_50": 0.25,
        "map": 0.1,
    },
}


def test_the_epoch_line_names_and_shows_a_single_stage_family_losses():
    from gunctl.cli.train_display import epoch_line

    line = epoch_line(RECORD, 3)
    assert "train loss 1.500 (cls/box 1.000 0.500)" in line
    assert "val loss 1.200 (cls/box 0.700 0.500)" in line
    assert "obj" not in line and "rpn" not in line


@pytest.mark.parametrize(
    ("model", "header"),
    [
        ("fasterrcnn_resnet18_fpn", "cls / box / obj / rpn"),
        ("retinanet_resnet18_fpn", "cls / box"),
        ("fcos_resnet18_fpn", "cls / box / ctr"),
        ("ssdlite320_mobilenet_v3_large", "cls / box"),
    ],
)
def test_the_epoch_table_has_the_family_loss_columns(model, header):
    from gunctl.cli.train_display import add_epoch_row, epoch_table

    table = epoch_table(width=200, model=model)
    headers = [str(column.header) for column in table.columns]
    assert headers.count(header) == 2  # train and val
    add_epoch_row(table, RECORD, 3)
    if model.startswith(("retinanet", "ssdlite")):
        cells = [list(column.cells) for column in table.columns]
        assert ["1.000 0.500"] in cells and ["0.700 0.500"] in cells


def test_validate_lists_the_checkpoint_family_losses():
    from rich.console import Console

    from gunctl.cli.validate import validation_table

    metrics = {**RECORD["val"], "images": 8, "boxes": 9, "loss_bbox_ctrness": 0.3}
    result = SimpleNamespace(
        metrics=metrics,
        facts={"model": "fcos_resnet18_fpn", "epoch": 1},
        checkpoint="x.pth",
        data="val split",
        tta=None,
    )
    console = Console(width=200, record=True)
    console.print(validation_table(result, 0.5))
    text = console.export_text()
    for key in ("loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"):
        assert f"val {key}" in text
    assert "loss_objectness" not in text
