"""A benchmark embedded by every rank of a process group, one contiguous shard each (docs/method.md §7.9).

Rank ``r`` of ``W`` embeds items ``[r*P, min((r+1)*P, N))`` of ``benchmark.embed_items()`` with
``P = ceil(N / W)``, through :func:`qgface.eval.embed.embed_benchmark` (the same decoding, transforms
and flip fusion as offline evaluation). Each shard is padded with zero rows to ``P``, so every rank
contributes a tensor of the same shape to the same single ``all_gather``; the gathered ``[W*P, D+1]``
rows are rank 0's shard, then rank 1's, ..., so cutting the padding off the end of each gives the
embeddings in benchmark order. The collectives go through ``torch.distributed`` directly (eval/ does
not import train/); without a process group the whole benchmark is one shard.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from qgface.eval.benchmarks.base import Benchmark
from qgface.eval.embed import ImageSource, embed_benchmark
from qgface.models import EMBEDDING_SIZE

__all__ = ["embed_shard", "gather_shards", "shard_bounds"]


def shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous slice of ``total`` items; ranks past the end get
    an empty slice (``start == stop``). Every shard is padded to ``ceil(total / world_size)`` rows."""
    per_rank = math.ceil(total / world_size)
    start = min(rank * per_rank, total)
    return start, min(start + per_rank, total)


def embed_shard(
    model: nn.Module,
    benchmark: Benchmark,
    source: ImageSource,
    rank: int,
    world_size: int,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    tf32: bool,
    progress: bool = False,
) -> torch.Tensor:
    """This rank's shard as ``[ceil(N/W), D+1]`` float32 rows ``(embedding, norm)`` on ``device``, zero-padded."""
    total = len(benchmark.embed_items())
    start, stop = shard_bounds(total, rank, world_size)
    rows = torch.zeros(math.ceil(total / world_size), EMBEDDING_SIZE + 1, dtype=torch.float32, device=device)
    if stop > start:
        embeddings, norms = embed_benchmark(
            model,
            benchmark,
            source,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            tf32=tf32,
            item_range=(start, stop),
            progress=progress,
        )
        if embeddings.shape[1] != EMBEDDING_SIZE:
            raise ValueError(
                f"{benchmark.name}: the model gives {embeddings.shape[1]}-d embeddings, expected {EMBEDDING_SIZE}"
            )
        rows[: stop - start, :EMBEDDING_SIZE] = torch.from_numpy(embeddings)
        rows[: stop - start, EMBEDDING_SIZE] = torch.from_numpy(norms)
    return rows


def gather_shards(local_rows: torch.Tensor, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's :func:`embed_shard` rows -> ``(embeddings [total, D], norms [total])`` in benchmark
    order, on every rank (one all_gather of equally shaped tensors)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(local_rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local_rows.contiguous())
        rows = torch.cat(parts)  # rank order = benchmark order, each shard's padding at its end
        world_size = dist.get_world_size()
    else:
        rows, world_size = local_rows, 1
    per_rank = local_rows.shape[0]
    sizes = [stop - start for start, stop in (shard_bounds(total, r, world_size) for r in range(world_size))]
    keep = torch.cat([torch.arange(size) + r * per_rank for r, size in enumerate(sizes)])
    rows = rows[keep.to(rows.device)].cpu().numpy()
    return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, -1])
