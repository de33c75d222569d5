"""ResumableDistributedSampler: DistributedSampler's partition, (index, epoch) items, exact resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from qgface.data.sampler import ResumableDistributedSampler


@pytest.mark.parametrize("num_samples,replicas", [(10, 3), (12, 4), (7, 1), (9, 2)])
def test_same_partition_as_distributed_sampler_drop_last(num_samples, replicas):
    for epoch in (0, 1, 5):
        seen: list[int] = []
        for rank in range(replicas):
            ours = ResumableDistributedSampler(num_samples, replicas, rank, seed=3)
            ours.set_epoch(epoch)
            ref = DistributedSampler(range(num_samples), replicas, rank, shuffle=True, seed=3, drop_last=True)
            ref.set_epoch(epoch)
            items = list(ours)
            assert items == [(i, epoch) for i in ref]
            assert len(ours) == len(ref) == num_samples // replicas
            seen.extend(i for i, _ in items)
        assert len(seen) == len(set(seen)) == (num_samples // replicas) * replicas  # no overlap, all ranks


def test_epochs_are_different_permutations_and_unshuffled_is_in_order():
    sampler = ResumableDistributedSampler(50, 1, 0, seed=0)
    first = [i for i, _ in sampler]
    sampler.set_epoch(1)
    assert sorted(first) == list(range(50)) and [i for i, _ in sampler] != first
    ordered = ResumableDistributedSampler(10, 2, 1, shuffle=False)
    assert [i for i, _ in ordered] == [1, 3, 5, 7, 9]


def test_resume_yields_exactly_the_remaining_indices():
    sampler = ResumableDistributedSampler(40, 2, 1, seed=9)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_batch=3, batch_size=4)
    assert list(sampler) == full[12:] and len(sampler) == 8
    sampler.set_epoch(4, start_batch=50, batch_size=4)  # past the end: nothing left this epoch
    assert list(sampler) == [] and len(sampler) == 0
    sampler.set_epoch(5)  # the next epoch starts from its beginning again
    assert len(sampler) == 20 and all(e == 5 for _, e in sampler)


def test_resumed_dataloader_continues_with_the_same_batches():
    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return 30

        def __getitem__(self, item):
            index, epoch = item
            return torch.tensor([index, epoch])

    sampler = ResumableDistributedSampler(30, 1, 0, seed=1)
    loader = DataLoader(Echo(), batch_size=4, sampler=sampler, drop_last=True)
    sampler.set_epoch(2)
    full = list(loader)
    sampler.set_epoch(2, start_batch=5, batch_size=4)
    resumed = list(loader)
    assert len(full) == 7 and len(resumed) == len(loader) == 2
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rank 2"):
        ResumableDistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match="3 samples"):
        ResumableDistributedSampler(3, 4, 0)
