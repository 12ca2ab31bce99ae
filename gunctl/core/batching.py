"""Which images go into which batch, per epoch and per rank.

The order of an epoch depends only on (seed, epoch), so a resumed run sees the same
batches, and a run interrupted mid-epoch can skip the batches it already trained on.
Items are ``(epoch, index)`` keys, so the dataset seeds its augmentation per epoch even in
persistent DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


class EpochBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of one rank's share of the indices; ``set_epoch`` before iterating.

    With ``aspect_ratios``, images whose width/height fall on the same side of 1 are
    batched together (torchvision's aspect-ratio grouping): the batch is padded to its
    largest image, so mixing portrait and landscape images wastes compute on padding.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        aspect_ratios: Sequence[float] | None = None,
    ):
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.groups = [int(r >= 1.0) for r in aspect_ratios] if aspect_ratios else None
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._batches()[self.skip :]:
            yield [(self.epoch, index) for index in batch]

    def batches_per_epoch(self) -> int:
        return len(self._batches())

    def _batches(self) -> list[list[int]]:
        own = self._batches_for(self.rank)
        if self.groups is None or self.world_size == 1:
            return own
        # Grouping can leave ranks with different batch counts; every rank must run the same
        # number of steps (each step is a collective), so the short ones repeat batches.
        most = max(len(self._batches_for(rank)) for rank in range(self.world_size))
        return [own[i % len(own)] for i in range(most)] if own else own

    def _batches_for(self, rank: int) -> list[list[int]]:
        indices = self._rank_indices(rank)
        if self.groups is None:
            return [
                indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)
            ]
        buckets: dict[int, list[int]] = {}
        for index in indices:
            buckets.setdefault(self.groups[index], []).append(index)
        batches = [
            bucket[i : i + self.batch_size]
            for bucket in buckets.values()
            for i in range(0, len(bucket), self.batch_size)
        ]
        order = torch.randperm(len(batches), generator=self._generator(1)).tolist()
        return [batches[i] for i in order] if self.shuffle else batches

    def _rank_indices(self, rank: int) -> list[int]:
        if self.shuffle:
            indices = torch.randperm(self.size, generator=self._generator(0)).tolist()
        else:
            indices = list(range(self.size))
        per_rank = math.ceil(self.size / self.world_size)
        padded = (
            indices + indices[: per_rank * self.world_size - self.size]
        )  # as DistributedSampler
        return padded[rank :: self.world_size]

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 2 + salt)
