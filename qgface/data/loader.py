"""The training DataLoader: dataset on disk -> views (docs/method.md §2) -> resumable sampler -> batches.

A batch is ``(views [B, V, 3, 112, 112] uint8, labels [B] int64)``; the training step normalises the
views on its device (``images.to_network_input``) and, with two views, feeds ``views[:, 0]`` (H) and
``views[:, 1]`` (L) as ``[H_1..H_B, L_1..L_B]`` (docs/method.md §2).

Worker processes: ``data.num_workers=-1`` gives each rank its share of the CPUs this process may use
(``os.sched_getaffinity``, shared by the ``LOCAL_WORLD_SIZE`` ranks of the node) less one for the
training process, at most ``MAX_AUTO_WORKERS``; ``data.prefetch_factor=0`` keeps a few batches in
flight. A warning is logged when the CPUs are far fewer than the loader needs.

An image-folder training set is listed once, by rank 0, into a cached index file under
``<output_root>/index-cache/`` (``folder_index``) that the other ranks, the workers and later runs
map instead of listing the folder again; it is rebuilt when the folder changes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader

from qgface.data.cpus import (
    available_cpus,
    ranks_on_this_node,
    resolve_num_workers,
    resolve_prefetch_factor,
    warn_if_few_cpus,
)
from qgface.data.datasets import IMAGE_EXTENSIONS, TwoViewDataset, has_folder_layout, open_train_dataset
from qgface.data.folder_index import ensure_folder_index, folder_index_path
from qgface.data.sampler import ResumableDistributedSampler
from qgface.data.workers import worker_options

__all__ = ["INDEX_CACHE_DIR", "build_train_loader", "loader_workers"]

log = logging.getLogger(__name__)

INDEX_CACHE_DIR = "index-cache"
"""folder under ``output_root`` holding the cached file lists of image-folder training sets"""


def loader_workers(data_cfg: Any) -> tuple[int, int | None]:
    """``(num_workers, prefetch_factor)`` of this rank from ``data.num_workers`` / ``data.prefetch_factor``."""
    cpus, ranks = available_cpus(), ranks_on_this_node()
    workers = resolve_num_workers(data_cfg.num_workers, cpus, ranks)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one warning per node
        warn_if_few_cpus(workers, cpus, ranks)
    return workers, resolve_prefetch_factor(data_cfg.prefetch_factor, workers) if workers else None


def build_train_loader(
    cfg: Any, root: str | os.PathLike, rank: int, world_size: int
) -> tuple[DataLoader, ResumableDistributedSampler, TwoViewDataset]:
    """``(loader, sampler, dataset)`` for this rank; call ``sampler.set_epoch`` before each epoch.

    ``root`` holds ``train.rec/.idx`` or ``<identity>/<image>`` folders; ``cfg.data`` gives the view
    recipe, batch size (per rank) and worker counts; ``cfg.seed`` seeds the shuffle and the views.
    """
    data = cfg.data
    dataset = TwoViewDataset(
        _open_base(root, Path(cfg.output_root) / INDEX_CACHE_DIR, rank), data.views, data, cfg.seed
    )
    sampler = ResumableDistributedSampler(len(dataset), world_size, rank, seed=cfg.seed, shuffle=True)
    workers, prefetch = loader_workers(data)
    log.info("data loader: %d worker(s) per rank, %s batches prefetched per worker", workers, prefetch or "no")
    loader = DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=sampler,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        **worker_options(workers, prefetch),
    )
    return loader, sampler, dataset


def _open_base(root: str | os.PathLike, cache_dir: Path, rank: int):
    """The base dataset; an image folder is listed into the cache by rank 0 while the other ranks wait
    (by this process itself when there is no process group)."""
    if not has_folder_layout(root):
        return open_train_dataset(root)
    distributed = torch_dist.is_available() and torch_dist.is_initialized()
    error = None
    if rank == 0 or not distributed:
        try:
            ensure_folder_index(root, cache_dir, IMAGE_EXTENSIONS)
        except Exception as exc:  # raised after the barrier, so no rank waits for a failed rank 0
            error = exc
    if distributed:
        torch_dist.barrier()
    if error is not None:
        raise error
    return open_train_dataset(root, folder_index_path(cache_dir, root))
