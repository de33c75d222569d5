"""A distributed sampler that resumes exactly mid-epoch (docs/method.md §5: DistributedSampler, drop_last).

It partitions an epoch exactly as ``torch.utils.data.DistributedSampler(shuffle, seed,
drop_last=True)`` does, but yields ``(index, epoch)`` pairs: the epoch travels with each index to
the dataset (``TwoViewDataset``), because persistent DataLoader workers never see ``set_epoch``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableDistributedSampler"]


class ResumableDistributedSampler(Sampler[tuple[int, int]]):
    """This rank's share of a seeded per-epoch permutation, with an exact mid-epoch resume.

    Epoch ``e`` shuffles with ``torch.Generator().manual_seed(seed + e)``, truncates to a multiple
    of ``num_replicas`` and takes ``indices[rank::num_replicas]``. ``set_epoch(e, start_batch, batch_size)``
    skips the first ``start_batch * batch_size`` indices of this rank's list, i.e. the batches a
    run already trained on before it was interrupted.
    """

    def __init__(
        self, num_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        if num_samples < num_replicas:
            raise ValueError(
                f"{num_samples} samples cannot give each of {num_replicas} ranks one sample "
                "(drop_last); use a larger dataset or fewer ranks"
            )
        self.dataset_size = int(num_samples)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.per_rank = self.dataset_size // self.num_replicas
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, start_batch: int = 0, batch_size: int = 1) -> None:
        """Select the epoch and skip this rank's first ``start_batch * batch_size`` indices."""
        if start_batch < 0 or batch_size < 1:
            raise ValueError(f"start_batch must be >= 0 and batch_size >= 1, got {start_batch}, {batch_size}")
        self.epoch = int(epoch)
        self.skip = min(int(start_batch) * int(batch_size), self.per_rank)

    def rank_indices(self) -> list[int]:
        """This rank's full index list for the current epoch (before the resume skip)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            indices = list(range(self.dataset_size))
        return indices[: self.per_rank * self.num_replicas][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(index, epoch) for index in self.rank_indices()[self.skip :]])

    def __len__(self) -> int:
        return self.per_rank - self.skip
