import torch

from gunctl.core.dataset import GunDataset, collate
from gunctl.core.split import load_split
from gunctl.core.transforms import TrainTransform


def test_items_are_float_images_and_detection_targets(demo_layout):
    split = load_split(demo_layout.split_file)
    dataset = GunDataset(demo_layout.raw, split["train"])
    seen_empty = False
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64 and (target["labels"] == 1).all()
        assert target["iscrowd"].shape == target["labels"].shape
        assert torch.allclose(
            target["area"],
            (target["boxes"][:, 2] - target["boxes"][:, 0])
            * (target["boxes"][:, 3] - target["boxes"][:, 1]),
        )
        seen_empty |= target["boxes"].shape == (0, 4)
        assert image.device.type == "cpu"
    assert seen_empty  # negatives come back with boxes of shape (0, 4)


def test_hflip_moves_boxes_with_pixels_and_is_seeded(demo_layout):
    split = load_split(demo_layout.split_file)
    plain = GunDataset(demo_layout.raw, split["train"])
    flipped = GunDataset(demo_layout.raw, split["train"], TrainTransform(hflip=1.0))
    index = next(i for i in range(len(plain)) if plain[i][1]["boxes"].numel())
    image, target = plain[index]
    image_f, target_f = flipped[(3, index)]
    width = image.shape[-1]
    assert torch.equal(image_f, image.flip(-1))
    expected = target["boxes"].clone()
    expected[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    assert torch.allclose(target_f["boxes"], expected)
    half = GunDataset(demo_layout.raw, split["train"], TrainTransform(hflip=0.5), seed=1)
    assert all(torch.equal(half[(e, i)][0], half[(e, i)][0]) for e in range(3) for i in range(3))
    flips = {torch.equal(half[(e, index)][0], image) for e in range(8)}
    assert flips == {True, False}  # different epochs flip differently


def test_collate_and_ram_cache(demo_layout):
    split = load_split(demo_layout.split_file)
    dataset = GunDataset(demo_layout.raw, split["val"])
    images, targets = collate([dataset[0], dataset[1]])
    assert len(images) == len(targets) == 2
    cached = GunDataset(demo_layout.raw, split["val"])
    cached.cache_all()
    assert torch.equal(cached[0][0], dataset[0][0])
