"""Embed a benchmark's images with flip-test fusion (docs/method.md §7).

For every (image, variant) item of a benchmark: decode the bytes (BGR), apply the variant transform,
normalise, run the backbone on the image and its horizontal flip, and fuse
``f = e*n + e_flip*n_flip``; the result is ``f/||f||`` with the fused norm ``||f||`` kept. Runs on the
GPU when there is one, always in float32 (no autocast) and by default without TF32 (cuDNN would
otherwise use it for every fp32 convolution, PyTorch's default), so CPU and GPU runs agree to
rounding; ``tf32=True`` (``eval.tf32``) trades that for speed.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from qgface.data.images import decode_bgr, normalize_bgr
from qgface.data.workers import worker_options
from qgface.eval.benchmarks.base import Benchmark, BenchmarkError
from qgface.tf32 import tf32_policy

__all__ = ["ImageSource", "embed_benchmark", "fused_embedding"]

log = logging.getLogger(__name__)

IMAGE_SHAPE = (112, 112, 3)


class ImageSource(Protocol):
    """Anything that returns the bytes of canonical image ``index`` (a Benchmark or a RecordSource)."""

    def load_bytes(self, index: int) -> bytes: ...


class _ItemDataset(Dataset):
    def __init__(self, source: ImageSource, benchmark: Benchmark, items: list[tuple[int, Hashable]]) -> None:
        self.source, self.benchmark, self.items = source, benchmark, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> torch.Tensor:
        index, variant = self.items[k]
        try:
            bgr = decode_bgr(self.source.load_bytes(index))
        except ValueError as exc:
            raise BenchmarkError(
                f"{self.benchmark.name}: image {index} ({self.benchmark.image_names[index]}): {exc}"
            ) from None
        bgr = self.benchmark.transform(variant, bgr)
        if bgr.shape != IMAGE_SHAPE:
            raise BenchmarkError(
                f"{self.benchmark.name}: image {index} ({self.benchmark.image_names[index]}) "
                f"is {bgr.shape[1]}x{bgr.shape[0]}, expected an aligned 112x112 face"
            )
        return torch.from_numpy(normalize_bgr(bgr))


@torch.no_grad()
def fused_embedding(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalize(e*n + e_flip*n_flip), ||e*n + e_flip*n_flip||)`` for a batch ``[B,3,H,W]``."""
    emb, norm = model(torch.cat([images, images.flip(3)]))
    half = images.shape[0]
    fused = emb[:half] * norm[:half] + emb[half:] * norm[half:]
    fused_norm = torch.linalg.vector_norm(fused, dim=1, keepdim=True)
    return fused / fused_norm, fused_norm


def embed_benchmark(
    model: nn.Module,
    benchmark: Benchmark,
    source: ImageSource | None = None,
    *,
    batch_size: int = 128,
    num_workers: int = 2,
    device: torch.device | str | None = None,
    tf32: bool = False,
    item_range: tuple[int, int] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused embeddings ``[N, 512]`` (float32, unit rows) and norms ``[N]`` of ``benchmark.embed_items()``.

    ``source`` gives the image bytes (default: the benchmark's own files); ``device`` defaults to CUDA
    when available, else CPU; ``tf32`` lets a GPU's fp32 convolutions and matmuls use TF32;
    ``item_range`` ``(start, stop)`` embeds only those items (one rank's shard, qgface.eval.sharded);
    ``progress`` shows a progress bar.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    items = benchmark.embed_items()
    if item_range is not None:
        items = items[item_range[0] : item_range[1]]
    loader = DataLoader(
        _ItemDataset(source or benchmark, benchmark, items),
        batch_size=batch_size,
        shuffle=False,
        pin_memory=device.type == "cuda",
        **worker_options(num_workers),
    )
    model = model.to(device).eval()
    embeddings = np.empty((len(items), 0), dtype=np.float32)
    norms = np.empty(len(items), dtype=np.float32)
    start = 0
    for images in tqdm(loader, desc=f"embed {benchmark.name}", mininterval=5, unit="batch", disable=not progress):
        with tf32_policy(matmul=tf32, conv=tf32):
            emb, norm = fused_embedding(model, images.to(device, non_blocking=True))
        if embeddings.shape[1] != emb.shape[1]:
            embeddings = np.empty((len(items), emb.shape[1]), dtype=np.float32)
        embeddings[start : start + len(emb)] = emb.float().cpu().numpy()
        norms[start : start + len(emb)] = norm.float().cpu().numpy().reshape(-1)
        start += len(emb)
    log.info("embedded %d items of %s on %s", len(items), benchmark.name, device)
    return embeddings, norms
