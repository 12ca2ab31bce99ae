"""A torch Dataset over the raw tree and one part of a split.

Items are ``(image, target)``: a float32 CxHxW tensor in [0, 1] and the target dict that
torchvision's detectors expect. No device moves happen here, so DataLoader workers can
decode in parallel; the trainer moves batches to the device.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Sequence
from pathlib import Path

import torch

from gunctl.core import tree
from gunctl.core.fileio import TooLarge, read_bounded
from gunctl.core.images import MAX_PIXELS, ImageProblem, decode_rgb, planes
from gunctl.core.labels import MAX_LABEL_BYTES, read_targets
from gunctl.core.paths import confine
from gunctl.core.transforms import EvalTransform
from gunctl.errors import DataError

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # as ingest


class GunDataset(torch.utils.data.Dataset):
    """Index with ``i`` or ``(epoch, i)``; the epoch seeds the random augmentation."""

    def __init__(self, raw_dir: Path, items: Sequence[dict], transform=None, seed: int = 0):
        self.raw_dir = Path(raw_dir)
        self.items = list(items)
        self.transform = transform or EvalTransform()
        self.seed = seed
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, boxes, classes = self._load(index)
        target = make_target(boxes, index, classes)
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch, index))
        if getattr(self.transform, "wants_source", False):  # e.g. a mosaic of other images
            return self.transform(image, target, generator, source=self)
        return self.transform(image, target, generator)

    def raw_item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image ``index`` as decoded (uint8 CxHxW), its boxes and labels (class k + 1)."""
        return self._load(index)

    def cache_all(self) -> None:
        """Decode every image once and keep it (uint8) in memory: for small data sets."""
        for index in range(len(self)):
            self._cache[index] = self._load(index)

    def image_name(self, index: int) -> str:
        return self.items[index]["image"]

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image, from the split's sizes when stored, else decoded."""
        ratios = []
        for index, item in enumerate(self.items):
            if "width" in item and "height" in item:
                ratios.append(item["width"] / item["height"])
            else:
                image = self._load(index)[0]
                ratios.append(image.shape[-1] / image.shape[-2])
        return ratios

    def boxes_and_sizes(self) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Each image's boxes and (height, width), for fitting anchors."""
        out = []
        for index in range(len(self)):
            image, boxes, _ = self._load(index)
            out.append((boxes, (int(image.shape[-2]), int(image.shape[-1]))))
        return out

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if index in self._cache:
            return self._cache[index]
        item = self.items[index]
        image_path = confine(self.raw_dir / tree.IMAGES, item["image"], "image")
        label_path = confine(self.raw_dir / tree.LABELS, item["label"], "label file")
        try:
            rgb, meta = decode_rgb(read_bounded(image_path.open("rb"), MAX_IMAGE_BYTES), MAX_PIXELS)
            label_bytes = read_bounded(label_path.open("rb"), MAX_LABEL_BYTES)
        except ImageProblem as problem:
            raise DataError(f"{image_path}: {problem.detail or problem.kind}") from None
        except TooLarge as exc:
            raise DataError(f"{image_path} or its label: {exc}") from None
        except OSError as exc:
            raise DataError(f"{exc.filename}: cannot read ({exc.strerror})") from None
        pixels = torch.from_numpy(planes(rgb))
        boxes, classes = read_targets(label_bytes, meta.width, meta.height, str(label_path))
        return (
            pixels,
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(classes, dtype=torch.int64) + 1,  # 0 is the background
        )


def make_target(
    boxes: torch.Tensor, index: int, labels: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    count = boxes.shape[0]
    return {
        "boxes": boxes,
        # class k of the manifest's class_names is label k + 1; 0 is the background
        "labels": labels if labels is not None else torch.ones(count, dtype=torch.int64),
        "image_id": torch.tensor(index, dtype=torch.int64),
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(count, dtype=torch.int64),
    }


def collate(batch):
    """Detection batches are lists: images differ in size, targets in box count."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def make_loader(
    dataset,
    workers: int,
    device: torch.device,
    seed: int = 0,
    *,
    batch_size=None,
    batch_sampler=None,
) -> torch.utils.data.DataLoader:
    """The DataLoader for training and scoring alike: ``batch_sampler`` or plain ``batch_size``."""
    batching = {"batch_sampler": batch_sampler} if batch_sampler else {"batch_size": batch_size}
    return torch.utils.data.DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,  # no re-fork (and re-copy of a RAM cache) each epoch
        worker_init_fn=_ignore_sigint if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # leaves the global RNG alone
    )


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop. SIGTERM
    # gets its default back (the trainer's graceful handler is inherited by the fork), so that
    # the DataLoader can always end a worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _mix(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
