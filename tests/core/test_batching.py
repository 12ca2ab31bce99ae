"""EpochBatchSampler: per-epoch order, padding across ranks, aspect grouping, resume skips."""

from __future__ import annotations

from gunctl.core.batching import EpochBatchSampler


def batches(sampler: EpochBatchSampler, epoch: int = 0, skip: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, skip)
    return [[index for _, index in batch] for batch in sampler]


def test_one_rank_covers_every_index_once_in_a_seeded_order():
    sampler = EpochBatchSampler(10, 3, seed=4)
    first = batches(sampler)
    assert [len(b) for b in first] == [3, 3, 3, 1] and len(sampler) == 4
    assert sorted(i for b in first for i in b) == list(range(10))
    assert batches(EpochBatchSampler(10, 3, seed=4)) == first  # same seed, same order
    assert batches(sampler, epoch=1) != first  # a new order each epoch
    assert batches(EpochBatchSampler(10, 3, seed=5)) != first


def test_items_carry_the_epoch_for_the_augmentation_seed():
    sampler = EpochBatchSampler(4, 2)
    sampler.set_epoch(3)
    assert {epoch for batch in sampler for epoch, _ in batch} == {3}


def test_ranks_are_padded_to_equal_shares_that_cover_everything():
    shares = [batches(EpochBatchSampler(10, 2, seed=1, rank=r, world_size=4)) for r in range(4)]
    flat = [[i for b in share for i in b] for share in shares]
    assert [len(f) for f in flat] == [3, 3, 3, 3]  # ceil(10 / 4), as DistributedSampler
    assert set().union(*map(set, flat)) == set(range(10))
    assert sum(map(len, flat)) - 10 == 2  # two indices repeated as padding


def test_aspect_grouping_never_mixes_portrait_and_landscape():
    ratios = [1.5, 0.7, 1.4, 0.6, 1.3, 0.8, 1.2, 0.9]
    sampler = EpochBatchSampler(8, 3, seed=0, aspect_ratios=ratios)
    result = batches(sampler)
    for batch in result:
        assert len({ratios[i] >= 1.0 for i in batch}) == 1
    assert sorted(i for b in result for i in b) == list(range(8))
    assert [len(b) for b in result].count(1) == 2  # each group of 4 ends in a batch of 1


def test_grouped_ranks_run_the_same_number_of_steps():
    # Seed 3 gives the two ranks groups that need 3 and 2 batches: the short rank repeats one.
    ratios = [1.5] * 8 + [0.5] * 4
    own = [
        EpochBatchSampler(12, 3, seed=3, rank=r, world_size=2, aspect_ratios=ratios)
        for r in range(2)
    ]
    assert [len(s._batches_for(r)) for r, s in enumerate(own)] == [3, 2]
    short = batches(own[1])
    assert len(short) == len(batches(own[0])) == 3
    assert short[2] == short[0]  # repeated, never mixed with the other rank's images
    for seed in range(10):
        lengths = {
            len(EpochBatchSampler(12, 3, seed=seed, rank=r, world_size=2, aspect_ratios=ratios))
            for r in range(2)
        }
        assert len(lengths) == 1


def test_resume_skips_the_batches_already_trained():
    sampler = EpochBatchSampler(11, 2, seed=3, aspect_ratios=[1.2, 0.8] * 5 + [1.0])
    whole = batches(sampler, epoch=2)
    assert batches(sampler, epoch=2, skip=2) == whole[2:]
    assert sampler.batches_per_epoch() == len(whole)  # the schedule's length ignores the skip
    assert batches(sampler, epoch=2, skip=len(whole)) == []
