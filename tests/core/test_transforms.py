"""The recipes' paired augmentation: boxes move with pixels, seeded, negatives kept."""

import pytest
import torch

from gunctl.core.dataset import GunDataset, make_target
from gunctl.core.split import load_split
from gunctl.core.transforms import AugmentTransform, mosaic


def _patch_image(height=120, width=180, box=(40, 30, 100, 80)):
    """Black image with a white rectangle exactly where its one box is."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    return image, torch.tensor([box], dtype=torch.float32)


def _white_inside(image: torch.Tensor, boxes: torch.Tensor) -> float:
    """Share of the white pixels (all channels near 1) that lie inside the boxes."""
    white = (image > 0.9).all(0)
    inside = torch.zeros_like(white)
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        inside[max(y1, 0) : y2, max(x1, 0) : x2] = True
    return float((white & inside).sum()) / max(1, float(white.sum()))


def _generator(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_move_with_pixels_through_zoom_crop_and_flip(seed):
    image, boxes = _patch_image()
    transform = AugmentTransform(hflip=0.5, zoom_out=1.0, crop=1.0)
    out, target = transform(image, make_target(boxes, 0), _generator(seed))
    assert out.dtype == torch.float32 and out.shape[0] == 3
    if len(target["boxes"]):  # a crop may leave the box out; then no white may remain
        assert _white_inside(out, target["boxes"]) > 0.97
        box = target["boxes"][0]
        assert 0 <= box[0] < box[2] <= out.shape[-1] and 0 <= box[1] < box[3] <= out.shape[-2]
        assert torch.allclose(target["area"], (box[2] - box[0]) * (box[3] - box[1]))
    else:
        assert (out > 0.9).all(0).float().mean() < 0.02


def test_seeded_repeatable_and_leaves_the_global_rng_alone():
    image, boxes = _patch_image()
    transform = AugmentTransform(photometric=1.0, zoom_out=0.5, crop=0.5)
    before = torch.get_rng_state()
    a = transform(image, make_target(boxes, 0), _generator(7))
    b = transform(image, make_target(boxes, 0), _generator(7))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    sums = {
        transform(image, make_target(boxes, 0), _generator(s))[0].sum().item() for s in range(6)
    }
    assert len(sums) > 1


def test_mosaic_keeps_every_box_on_its_pixels():
    items = [
        (*_patch_image(120 + 10 * i, 180 - 10 * i, (10 + i, 20, 60 + i, 70)), torch.tensor([i + 1]))
        for i in range(4)
    ]
    torch.manual_seed(0)
    canvas, boxes, labels = mosaic(items)
    assert canvas.shape[-2:] == (240, 360) and boxes.shape == (4, 4)
    assert labels.tolist() == [1, 2, 3, 4]  # each box keeps its class
    assert _white_inside(canvas.float() / 255, boxes) > 0.97
    assert (boxes[:, 2] <= 360).all() and (boxes[:, 3] <= 240).all() and (boxes >= 0).all()


def test_dataset_mosaic_with_negatives_is_seeded_per_epoch(demo_layout):
    split = load_split(demo_layout.split_file)
    transform = AugmentTransform(photometric=0.5, zoom_out=0.5, crop=0.5, mosaic=1.0)
    dataset = GunDataset(demo_layout.raw, split["train"], transform, seed=3)
    negative = next(i for i in range(len(dataset)) if not dataset.raw_item(i)[1].numel())
    for index in (0, negative):
        image, target = dataset[(1, index)]
        again, target_again = dataset[(1, index)]
        assert torch.equal(image, again) and torch.equal(target["boxes"], target_again["boxes"])
        assert target["boxes"].shape[1] == 4 and target["labels"].shape[0] == len(target["boxes"])
        # a mosaic: twice the first image's size, boxes from the other images too
        assert image.shape[-2:] == tuple(2 * s for s in dataset.raw_item(index)[0].shape[-2:])
    assert not torch.equal(dataset[(1, 0)][0], dataset[(2, 0)][0])  # another epoch, other draws
