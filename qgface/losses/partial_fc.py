"""A sharded margin head (Partial FC) for 600k–2M identities (the head of docs/method.md §3, sharded).

Rank r of W owns a contiguous slice of the C class proxies (:func:`shard_range`); the kernel slice
lives outside DDP, so no rank holds, all-reduces or keeps momentum for the whole [D, C] kernel.
Each step:

1. the embeddings, norms and labels of all ranks are gathered (rank order; the embeddings' gradient
   flows back to the rank that produced them);
2. the AdaFace norm statistics are updated from the gathered norms, so μ, σ and ĝ are identical on
   every rank (the replicated head on the same global batch computes the same numbers);
3. with ``sample_rate < 1`` each rank keeps every class of its slice that is a label in the global
   batch plus a seeded random share of the rest (Partial FC's class-centre sampling); the seed is
   (``seed``, rank, step counter), the counter is a buffer, so an exact resume samples the same;
4. each rank computes the cosines of the global batch against its (sampled) slice only, applies the
   margin to the target cosine of the rows whose class it owns, and the quality scaler to every row;
5. the softmax cross-entropy is assembled across ranks: the row maxima are all-reduced (MAX), the
   sums of exponentials and the target logits all-reduced (SUM).

The loss is the mean over the global batch and is the same number on every rank; its gradient with
respect to a rank's embeddings is d(global mean)/d(local embeddings) and that with respect to the
kernel slice is d(global mean)/d(slice), which is exactly what the replicated head gives on the
concatenated batch (``tests/test_partial_fc.py``). A trainer whose backbone is under DDP (which
averages gradients over the W ranks) must scale the embeddings' gradient by W to train as the
replicated head does, where each rank's loss is its local mean. The largest tensors are [N_global, C_local]
(C_local = the sampled slice); there is no [N_global, C] tensor on any rank. Memory: this is plain
autograd, not MarginHead's fused chunked loss, so backward keeps a few [N_global, C_local] tensors
and a normalised copy of the slice with its gradient (``tools/bench_heads.py --partial-fc`` measures it).

Collectives are passed in (:class:`Collectives`; ``qgface.train.dist.ProcessGroupCollectives``
under torchrun, :class:`SingleProcess` in one process), so this module runs and is tested without
a process group.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qgface.losses.margin import (
    EPS,
    MARGIN_KINDS,
    logit_scales,
    margin_scaler,
    target_logit,
)

_LO, _HI = -1.0 + EPS, 1.0 - EPS


class Collectives(Protocol):
    """What the sharded head needs from the process group (all ranks call each, in the same order)."""

    rank: int
    world_size: int

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenation over ranks in rank order along dim 0; backward: the summed gradient's own rows."""

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over ranks; backward passes the gradient through unchanged (every rank computes the same loss)."""

    def all_reduce_max(self, value: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks (no gradient)."""


class SingleProcess:
    """The collectives of a world of one process: identities."""

    rank, world_size = 0, 1

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        return local

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def all_reduce_max(self, value: torch.Tensor) -> torch.Tensor:
        return value


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(class_start, num_local) of rank's contiguous slice; the first C mod W ranks own one more."""
    base, extra = divmod(num_classes, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


INIT_CHUNK = 4096
"""classes per seeded block of the initial proxies (any world size draws the same block)"""


def initial_proxies(num_classes: int, embedding_size: int, seed: int, class_start: int, num_local: int) -> torch.Tensor:
    """Columns ``class_start ... class_start + num_local`` of the initial kernel [D, C]: unit-norm
    proxies from U(-1, 1), drawn in blocks of ``INIT_CHUNK`` classes, each from its own generator
    seeded by (``seed``, block). The full kernel is the same at every world size, and a rank draws
    only the blocks its slice touches (never the [D, C] kernel of 2M classes)."""
    if not 0 <= class_start <= class_start + num_local <= num_classes:
        raise ValueError(f"slice {class_start}+{num_local} lies outside {num_classes} classes")
    out = torch.empty(embedding_size, num_local)
    for block in range(class_start // INIT_CHUNK, -(-(class_start + num_local) // INIT_CHUNK)):
        lo, hi = block * INIT_CHUNK, min((block + 1) * INIT_CHUNK, num_classes)
        words = np.random.SeedSequence([seed, block]).generate_state(2)
        g = torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
        cols = torch.empty(embedding_size, hi - lo).uniform_(-1.0, 1.0, generator=g)
        cols.renorm_(2, 1, 1e-5).mul_(1e5)  # unit-norm proxies
        a, b = max(lo, class_start), min(hi, class_start + num_local)
        out[:, a - class_start : b - class_start] = cols[:, a - lo : b - lo]
    return out


def sample_size(num_local: int, sample_rate: float) -> int:
    """Classes of a slice kept per step (before adding positives beyond it): ceil(rate · num_local)."""
    return min(num_local, math.ceil(sample_rate * num_local))


def sample_classes(
    local_positives: torch.Tensor, num_local: int, sample_rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Sorted local class indices kept this step: every positive, then random others up to
    :func:`sample_size` (all positives are kept even when they are more)."""
    keep = sample_size(num_local, sample_rate)
    score = torch.rand(num_local, generator=generator)
    score[local_positives.cpu()] = 2.0  # above any U(0, 1) score: positives rank first
    keep = max(keep, int(local_positives.numel()))
    return score.topk(keep).indices.sort().values


class PartialFCHead(nn.Module):
    """Sharded class proxies + distributed margin softmax loss (see the module docstring).

    ``forward(local_embeddings [n, D], local_norms [n, 1], local_labels [n])
    -> (loss, local margin scaler ĝ [n, 1])``; every rank must pass the same n. ``quality_scale``
    is the head's own τ_q unless ``forward(..., quality_scale=τ)`` passes another, as in MarginHead.
    ``kernel`` is this rank's slice [D, num_local] of the classes ``class_start ...``.
    """

    def __init__(
        self,
        kind: str,
        num_classes: int,
        collectives: Collectives,
        embedding_size: int = 512,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        quality_scale: float = 0.0,
        sample_rate: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kind not in MARGIN_KINDS:
            raise ValueError(f"unknown margin head kind {kind!r}; valid: {', '.join(MARGIN_KINDS)}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if num_classes < collectives.world_size:
            raise ValueError(f"{num_classes} classes cannot be sharded over {collectives.world_size} ranks")
        self.kind, self.m, self.h, self.s, self.t_alpha = kind, m, h, s, t_alpha
        self.quality_scale, self.sample_rate, self.seed = float(quality_scale), sample_rate, seed
        self.comm, self.num_classes = collectives, num_classes
        self.class_start, self.num_local = shard_range(num_classes, collectives.rank, collectives.world_size)
        self.kernel = nn.Parameter(initial_proxies(num_classes, embedding_size, seed, self.class_start, self.num_local))
        self.register_buffer("batch_mean", torch.zeros(1))
        self.register_buffer("batch_std", torch.zeros(1))
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))
        self.last_sampled: torch.Tensor | None = None
        """global class ids this rank used in the last training forward (None: the whole slice)"""

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, classes={self.num_classes}, local={self.class_start}+{self.num_local}, "
            f"dim={self.kernel.shape[0]}, sample_rate={self.sample_rate}, quality_scale={self.quality_scale}"
        )

    @torch.no_grad()
    def _update_stats(self, norms: torch.Tensor) -> None:
        safe = norms.clamp(0.001, 100.0)
        a = self.t_alpha
        self.batch_mean.mul_(1 - a).add_(a * safe.mean())
        if safe.numel() > 1:  # the unbiased std of one sample is NaN
            self.batch_std.mul_(1 - a).add_(a * safe.std())

    def _generator(self) -> torch.Generator:
        """This rank's sampling stream for the current step (resumes exactly with the counter)."""
        words = np.random.SeedSequence([self.seed, self.comm.rank, int(self.sample_step)]).generate_state(2)
        return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))

    def _sampled(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Local indices of the classes used this step, or None for the whole slice."""
        if not self.training or self.sample_rate >= 1.0:
            return None
        local = labels - self.class_start
        positives = local[(local >= 0) & (local < self.num_local)].unique()
        cols = sample_classes(positives, self.num_local, self.sample_rate, self._generator()).to(labels.device)
        self.sample_step += 1
        return cols

    def forward(
        self,
        local_embeddings: torch.Tensor,
        local_norms: torch.Tensor,
        local_labels: torch.Tensor,
        quality_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=local_embeddings.device.type, enabled=False):
            dtype = torch.promote_types(local_embeddings.dtype, torch.float32)
            n_local = local_embeddings.shape[0]
            embeddings = self.comm.all_gather(local_embeddings.to(dtype))  # [N, D], grad to its rank
            norms = self.comm.all_gather(local_norms.detach().to(dtype).reshape(-1, 1))
            labels = self.comm.all_gather(local_labels.reshape(-1).long())
            if self.training:
                self._update_stats(norms)
            g_hat = margin_scaler(norms, self.batch_mean.to(dtype), self.batch_std.to(dtype), self.h)
            row_scale = logit_scales(g_hat, self.s, self.quality_scale if quality_scale is None else quality_scale)

            cols = self._sampled(labels)
            weight = self.kernel.to(dtype)
            local_y = labels - self.class_start
            owned = (local_y >= 0) & (local_y < self.num_local)
            if cols is not None:
                self.last_sampled = cols + self.class_start
                weight = weight.index_select(1, cols)
                remap = torch.full((self.num_local,), -1, dtype=torch.long, device=labels.device)
                remap[cols] = torch.arange(cols.numel(), device=labels.device)
                local_y = torch.where(owned, remap[local_y.clamp(0, self.num_local - 1)], local_y)
            else:
                self.last_sampled = None
            rows = owned.nonzero().squeeze(1)
            target_cols = local_y[rows]

            cos = (embeddings @ F.normalize(weight, dim=0)).clamp(_LO, _HI)  # [N, C_local]
            t = target_logit(self.kind, cos[rows, target_cols].unsqueeze(1), g_hat[rows], self.m)
            z = cos.index_put((rows, target_cols), t.squeeze(1)) * row_scale
            with torch.no_grad():  # a constant shift per row: it cancels in the loss, so no gradient
                z_max = self.comm.all_reduce_max(z.amax(1))  # local to global row maxima
            sum_exp = self.comm.all_reduce_sum(torch.exp(z - z_max.unsqueeze(1)).sum(1))  # local to global
            z_y = self.comm.all_reduce_sum(  # each target logit lives on its owner only
                torch.zeros_like(z_max).index_put((rows,), z[rows, target_cols])
            )
            loss = (z_max + sum_exp.log() - z_y).mean()
            own = slice(self.comm.rank * n_local, (self.comm.rank + 1) * n_local)
        return loss, g_hat[own]

    @torch.no_grad()
    def proxies(self, labels: torch.Tensor) -> torch.Tensor:
        """Current proxies W_c [n, D] of ``labels``: each owner fills the rows of its classes among
        the distinct labels, one SUM all-reduce of [distinct, D] assembles them (not the whole kernel).

        Every rank must pass the same *set* of labels; their order may differ (the queue holds the
        same entries in a rank-specific slot order): the reduced rows are the sorted distinct labels."""
        classes, inverse = labels.reshape(-1).long().unique(return_inverse=True)
        local = classes - self.class_start
        owned = (local >= 0) & (local < self.num_local)
        rows = self.kernel.new_zeros(classes.numel(), self.kernel.shape[0])
        rows[owned] = self.kernel.detach()[:, local[owned]].t()
        return self.comm.all_reduce_sum(rows)[inverse]
