"""The training DataLoader: dataset on disk -> views (METHOD.md §2) -> resumable sampler -> batches.

A batch is ``(views [B, V, 3, 112, 112] float32, labels [B] int64)``; with two views the trainer
feeds ``views[:, 0]`` (H) and ``views[:, 1]`` (L) as ``[H_1..H_B, L_1..L_B]`` (METHOD.md §2).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader

from qgface.data.datasets import TwoViewDataset, open_train_dataset
from qgface.data.sampler import ResumableDistributedSampler

__all__ = ["build_train_loader", "worker_init"]


def worker_init(worker_id: int) -> None:
    """One thread per worker (the workers already run in parallel), and deaf to the stop signals.

    Slurm signals every process of a job step. The training process handles SIGUSR1/SIGUSR2/SIGTERM by
    finishing its step and saving; a worker dying of the same signal would crash it first.
    """
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    for stop_signal in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(stop_signal, signal.SIG_IGN)


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
        num_workers=data.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=data.num_workers > 0,
        worker_init_fn=worker_init,
    )
    return loader, sampler, dataset
