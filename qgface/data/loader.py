"""The training DataLoader: dataset on disk -> views (METHOD.md §2) -> resumable sampler -> batches.

A batch is ``(views [B, V, 3, 112, 112] float32, labels [B] int64)``; with two views the trainer
feeds ``views[:, 0]`` (H) and ``views[:, 1]`` (L) as ``[H_1..H_B, L_1..L_B]`` (METHOD.md §2).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DataLoader

from qgface.data.datasets import TwoViewDataset, open_train_dataset
from qgface.data.sampler import ResumableDistributedSampler
from qgface.data.workers import worker_options

__all__ = ["build_train_loader"]


def build_train_loader(cfg: Any, root: str | os.PathLike, rank: int,
                       world_size: int) -> tuple[DataLoader, ResumableDistributedSampler, TwoViewDataset]:
    """``(loader, sampler, dataset)`` for this rank; call ``sampler.set_epoch`` before each epoch.

    ``root`` holds ``train.rec/.idx`` or ``<identity>/<image>`` folders; ``cfg.data`` gives the view
    recipe, batch size (per rank) and worker count; ``cfg.seed`` seeds the shuffle and the views.
    """
    data = cfg.data
    dataset = TwoViewDataset(open_train_dataset(root), data.views, data, cfg.seed)
    sampler = ResumableDistributedSampler(len(dataset), world_size, rank, seed=cfg.seed, shuffle=True)
    loader = DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=sampler,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=data.num_workers > 0,
        **worker_options(data.num_workers),
    )
    return loader, sampler, dataset
