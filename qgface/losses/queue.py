"""The QGFace key queue with proxy compensation and the dynamic-margin EMA (docs/method.md §4).

A ring buffer of the last ``size`` detached embeddings, their labels and the class proxy ``W_y``
that was current when each was enqueued. Everything that must survive a requeue is a buffer, so
``state_dict()`` saves it: ``keys``, ``labels`` (-1 = empty slot), ``proxies``, ``ptr`` (next slot)
and ``dynamic_margin``.

Order and distribution: ``enqueue`` gathers the entries of all ranks with :func:`gather_own_first`
(own rank first, then the others in rank order), so on every rank the local entries occupy the
slots ``ptr, ptr+1, …`` and ``enqueue`` can return their slot indices. Every rank writes each
step's block of keys at the same slots, each in its own order. When ``size`` is a multiple of the
block, blocks are never cut by the wrap, so rank queues hold the same entries, in a rank-specific
order within each block (the loss depends on it only through the order of its float sums), and
:func:`as_held_by_rank` turns rank 0's state into any rank's; otherwise the oldest, partly
overwritten block keeps other entries on each rank.

Views: :meth:`ContrastQueue.current` returns the usable entries in ascending slot order (empty
slots dropped, and with ``effective_size`` only the most recent entries, for progressive growth);
:meth:`ContrastQueue.index_in_current` maps slot indices (e.g. those ``enqueue`` returned) to
row positions of that view, which is what ``qg_contrastive_loss(own_index=...)`` expects.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from qgface.vocab.choices import QUEUE_MODES

PAPER_QUEUE_SIZE = 16384
"""the published K (docs/method.md §4); the automatic size never goes below it"""
MIN_HISTORY_STEPS = 4
"""a queue holding fewer steps than this is mostly the current step's own keys: warned about"""


def queue_size_for(queue_size: int, queue_steps: int, step_keys: int) -> int:
    """K: ``queue_size``, or for 0 ``max(PAPER_QUEUE_SIZE, queue_steps x step_keys)``.

    ``step_keys`` is what one step enqueues over all ranks (views x batch x ranks). What the queue
    adds to the loss is history, the negatives of earlier steps, so the automatic size keeps at
    least ``queue_steps`` steps of them at any number of GPUs (docs/method.md §4): at 2 x 8 GPUs x
    512 images x 2 views a step enqueues 16,384 keys, which K = 16,384 would hold no step of.
    """
    return queue_size if queue_size > 0 else max(PAPER_QUEUE_SIZE, queue_steps * step_keys)


def history_steps(queue_size: int, step_keys: int) -> float:
    """Steps of keys the queue holds: ``queue_size / step_keys`` (1 = only the current step)."""
    return queue_size / step_keys


ProxySource = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
"""the head kernel W [D, C], or a function labels [n] -> proxies [n, D] (the sharded head's ``proxies``)"""


def proxies_of(proxy_weight: ProxySource, labels: torch.Tensor) -> torch.Tensor:
    """The current proxy W_c [n, D] of each label, detached."""
    if callable(proxy_weight):
        return proxy_weight(labels).detach()
    return proxy_weight.detach()[:, labels].t()


def gather_own_first(t: torch.Tensor) -> torch.Tensor:
    """all_gather ``t`` (same shape on every rank, no gradient) and concatenate own rank first,
    then the other ranks in rank order (docs/method.md §4). Without a process group: ``t`` unchanged
    (a group of size 1 still runs the collective, which is how ``tools/gpu_check.py`` tests NCCL)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    rank, world = dist.get_rank(), dist.get_world_size()
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return torch.cat([t] + parts[:rank] + parts[rank + 1 :])


def as_held_by_rank(state: dict[str, torch.Tensor], rank: int, world_size: int, block: int) -> dict[str, torch.Tensor]:
    """Rank 0's queue ``state_dict`` as rank ``rank`` of ``world_size`` holds it, where every enqueue
    writes ``block`` keys (``block / world_size`` per rank); needs ``size`` to be a multiple of ``block``.

    Within a block rank 0 holds the ranks' keys in the order 0, 1, …, W-1 and rank r in the order r,
    0, …, r-1, r+1, … (:func:`gather_own_first`): the per-rank chunks of every block are permuted.
    """
    size = state["labels"].shape[0]
    if block % world_size or size % block:
        raise ValueError(f"a queue of {size} slots is not made of whole blocks of {block} keys from {world_size} ranks")
    order = [rank, *range(rank), *range(rank + 1, world_size)]
    held = dict(state)
    for name in ("keys", "labels", "proxies"):
        chunks = state[name].reshape(size // block, world_size, block // world_size, *state[name].shape[1:])
        held[name] = chunks[:, order].reshape(state[name].shape)
    return held


class ContrastQueue(nn.Module):
    """Queue of ``size`` keys of dimension ``dim``; ``mode`` "proxy" (compensated) or "fifo" (plain)."""

    def __init__(self, size: int, dim: int = 512, mode: str = "proxy", t_alpha: float = 0.01) -> None:
        super().__init__()
        if mode not in QUEUE_MODES:
            raise ValueError(f"unknown queue mode {mode!r}; valid: {', '.join(QUEUE_MODES)}")
        if size < 1:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size, self.dim, self.mode, self.t_alpha = size, dim, mode, t_alpha
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("proxies", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("dynamic_margin", torch.zeros(()))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, mode={self.mode}"

    @torch.no_grad()
    def enqueue(
        self,
        local_keys: torch.Tensor,
        local_labels: torch.Tensor,
        proxy_weight: ProxySource | None,
        *,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Write this step's keys of all ranks (own first); return the slots of the local ones [n].

        ``proxy_weight`` is the head kernel W [D, C]; column ``W[:, label]`` is stored with each key
        (may be None in "fifo" mode). ``gather`` overrides :func:`gather_own_first`.
        """
        gather = gather_own_first if gather is None else gather
        n_local = local_keys.shape[0]
        keys = gather(local_keys.detach().to(self.keys.dtype))
        labels = gather(local_labels.detach().reshape(-1).long())
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(
                f"queue size {self.size} is smaller than one step's {n} gathered keys; "
                f"raise the queue size (contrast queue_size) to at least {n}"
            )
        slots = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[slots] = keys.to(self.keys.device)
        self.labels[slots] = labels.to(self.labels.device)
        if proxy_weight is not None:
            self.proxies[slots] = proxies_of(proxy_weight, labels).to(self.proxies)
        elif self.mode == "proxy":
            raise ValueError("a 'proxy' queue needs proxy_weight (the head kernel [D, C]) at enqueue")
        self.ptr.copy_((self.ptr + n) % self.size)
        return slots[:n_local]

    def _selected(self, effective_size: int | None) -> torch.Tensor:
        """[size] bool: filled slots, restricted to the ``effective_size`` most recent when given."""
        sel = self.labels >= 0
        if effective_size is not None and effective_size < self.size:
            age = (self.ptr - 1 - torch.arange(self.size, device=self.labels.device)) % self.size
            sel &= age < effective_size
        return sel

    @torch.no_grad()
    def current(
        self, proxy_weight: ProxySource | None, effective_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [K', D], labels [K']) in slot order; in "proxy" mode every key is compensated by
        its class proxy's drift: v + (||v||/||p_stored||)·(W_c(now) - p_stored) (docs/method.md §4)."""
        idx = self._selected(effective_size).nonzero().squeeze(1)
        keys, labels = self.keys[idx], self.labels[idx]
        if self.mode == "proxy":
            if proxy_weight is None:
                raise ValueError("a 'proxy' queue needs proxy_weight (the head kernel [D, C]) in current()")
            stored = self.proxies[idx]
            now = proxies_of(proxy_weight, labels).to(keys)
            ratio = keys.norm(dim=1, keepdim=True) / stored.norm(dim=1, keepdim=True).clamp_min(1e-12)
            keys = keys + ratio * (now - stored)
        return keys, labels

    def index_in_current(
        self, slots: torch.Tensor, effective_size: int | None = None, check: bool = True
    ) -> torch.Tensor:
        """Row positions in ``current(..., effective_size)`` of the given slot indices (same shape).

        ``check`` raises when a slot is not in that view, which reads a flag on the host (a GPU
        sync); the trainer passes ``check=False`` and reads :meth:`holds_slots` with its other
        per-step flags instead.
        """
        sel = self._selected(effective_size)
        if check and not bool(self.holds_slots(slots, effective_size)):
            raise ValueError(
                f"some slots are not in the current view (effective_size={effective_size} is "
                f"smaller than one step's gathered keys?)"
            )
        return (sel.cumsum(0) - 1)[slots]

    def holds_slots(self, slots: torch.Tensor, effective_size: int | None = None) -> torch.Tensor:
        """0-dim bool tensor (no host read): are all ``slots`` in ``current(..., effective_size)``?"""
        return self._selected(effective_size)[slots].all()

    @torch.no_grad()
    def update_dynamic_margin(
        self, pos_cos: torch.Tensor | float, hardest_neg_cos: torch.Tensor | float
    ) -> torch.Tensor:
        """EMA with t_alpha of the batch mean of (positive - hardest negative cosine) (docs/method.md §4)."""
        diff = torch.as_tensor(
            pos_cos, dtype=self.dynamic_margin.dtype, device=self.dynamic_margin.device
        ) - torch.as_tensor(hardest_neg_cos, dtype=self.dynamic_margin.dtype, device=self.dynamic_margin.device)
        self.dynamic_margin.mul_(1 - self.t_alpha).add_(self.t_alpha * diff.mean())
        return self.dynamic_margin
