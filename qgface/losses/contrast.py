"""Quality-guided contrastive loss of QGFace (docs/method.md §4).

The loss takes tensors and returns tensors: the queue (already holding the current batch's keys,
gathered by the caller, own rank first) is an argument, so this module runs in one CPU process.

Rows: for each of the B pairs both directions (q→k and k→q, 2B rows), logits
``[cos(a_i, p_i), cos(a_i, v_1) … cos(a_i, v_K)]`` with the positive at column 0.

Masking: a masked queue entry's cosine is set to 0, as docs/method.md §4 says ("set to 0"), so its
logit is the constant 0: it no longer depends on the entry (no gradient, and changing the entry
changes nothing) while every row keeps K+1 columns, which the log(129)/log(K+1) rescale assumes.
- ``own_index`` [B, J] (long): queue positions that hold sample i's own views (J = 2 for its H
  and L keys, as returned by ``ContrastQueue.enqueue`` and mapped by
  ``ContrastQueue.index_in_current``). These are always masked, whatever ``mask_same_class``.
- with ``mask_same_class`` and labels, every entry whose label equals the sample's is masked too.
  ``mask_same_class=True`` with neither labels nor ``own_index`` is refused (nothing to mask with).

``margin`` (float or 0-d tensor, e.g. the queue's dynamic margin) is subtracted from the positive.
The quality factor is per pair (identical for its two rows); ``rescale`` multiplies the loss by
log(129)/log(K+1). ``return_stats=True`` returns a :class:`ContrastOutput` with the statistics the
trainer logs instead of the bare loss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from qgface.vocab.choices import QUALITY_METHODS, SCALE_RANGES, SELECTS

QUALITY_EPS = 1e-3
"""ε in the denominators of the linear and cos quality factors, as the reference computes them (docs/method.md §4)."""


class ContrastOutput(NamedTuple):
    loss: torch.Tensor  # scalar, with gradient
    active_fraction: torch.Tensor  # fraction of the 2B rows with a non-zero quality factor
    pos_cos: torch.Tensor  # mean positive cosine
    hardest_neg_cos: torch.Tensor  # mean over rows of the largest unmasked negative cosine


def quality_factor(t: torch.Tensor, threshold: float, method: str, scale_range: str) -> torch.Tensor:
    """Per-pair factor from the pair quality t ∈ [0, 1] (docs/method.md §4): s1 where t < τ_c, else s2.

    ``linear`` and ``cos`` divide by ``τ_c + ε``, ``τ_c - 1 + ε`` and ``1 - τ_c + ε`` with ε = 1e-3,
    exactly as the reference implementation does (docs/method.md §4), so s1 at ``t -> τ_c`` and s2 at
    ``t = τ_c`` are slightly off 1 and the factor is not exactly continuous there.
    """
    if method not in QUALITY_METHODS:
        raise ValueError(f"unknown quality method {method!r}; valid: {', '.join(QUALITY_METHODS)}")
    if scale_range not in SCALE_RANGES:
        raise ValueError(f"unknown scale_range {scale_range!r}; valid: {', '.join(SCALE_RANGES)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"quality threshold τ_c must be in (0, 1), got {threshold}")
    tau, eps = threshold, QUALITY_EPS
    whole = scale_range == "whole"
    if method == "sgn":
        s1 = torch.ones_like(t)
        s2 = torch.full_like(t, 1.0 if whole else 0.0)
    elif method == "linear":
        s1 = t / (tau + eps)
        s2 = (t - 1) / (tau - 1 + eps) if whole else torch.zeros_like(t)
    else:
        s1 = (1 - torch.cos(math.pi * t / (tau + eps))) / 2
        s2 = torch.cos(math.pi * (t - tau + 1 - tau) / (2 * (1 - tau + eps))) + 1 if whole else torch.zeros_like(t)
    return torch.where(t < tau, s1, s2)


def pair_quality(q_scaler: torch.Tensor, k_scaler: torch.Tensor, select: str) -> torch.Tensor:
    """t from the two views' margin scalers ĝ ∈ [-1, 1]: low = min, mean, high = max of (ĝ+1)/2."""
    tq, tk = (q_scaler.detach() + 1) / 2, (k_scaler.detach() + 1) / 2
    if select == "low":
        return torch.minimum(tq, tk)
    if select == "mean":
        return (tq + tk) / 2
    if select == "high":
        return torch.maximum(tq, tk)
    raise ValueError(f"unknown select {select!r}; valid: {', '.join(SELECTS)}")


def _negative_mask(
    b: int,
    k: int,
    device: torch.device,
    q_labels: torch.Tensor | None,
    queue_labels: torch.Tensor | None,
    mask_same_class: bool,
    own_index: torch.Tensor | None,
) -> torch.Tensor | None:
    """[B, K] bool, True = masked; None when nothing is masked."""
    have_labels = q_labels is not None and queue_labels is not None
    if mask_same_class and not have_labels and own_index is None:
        raise ValueError(
            "mask_same_class=True needs q_labels and queue_labels, or own_index (the queue "
            "positions of each sample's own views); pass one, or mask_same_class=False"
        )
    mask = None
    if mask_same_class and have_labels:
        mask = q_labels.reshape(-1, 1).to(device) == queue_labels.reshape(1, -1).to(device)
    if own_index is not None:
        if own_index.shape[0] != b:
            raise ValueError(f"own_index has {own_index.shape[0]} rows, expected B = {b}")
        mask = torch.zeros(b, k, dtype=torch.bool, device=device) if mask is None else mask
        mask.scatter_(1, own_index.to(device).long().reshape(b, -1), True)
    return mask


def qg_contrastive_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    q_scaler: torch.Tensor,
    k_scaler: torch.Tensor,
    *,
    q_labels: torch.Tensor | None = None,
    queue_labels: torch.Tensor | None = None,
    s: float = 64.0,
    threshold: float = 0.5,
    method: str = "sgn",
    scale_range: str = "half",
    select: str = "low",
    margin: float | torch.Tensor = 0.0,
    mask_same_class: bool = True,
    detach_pos: bool = False,
    rescale: bool = True,
    own_index: torch.Tensor | None = None,
    return_stats: bool = False,
) -> torch.Tensor | ContrastOutput:
    """L_con = CE(s·(cos - margin)·factor, 0) over 2B rows, optionally rescaled (docs/method.md §4).

    q (L views) and k (H views) are L2-normalised [B, D]; ``queue`` [K, D]; ``q_scaler``,
    ``k_scaler`` [B, 1] are the classification head's margin scalers ĝ of the two views.
    """
    if q.shape != k.shape or q.dim() != 2:
        raise ValueError(f"q and k must both be [B, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    b, n_queue = q.shape[0], queue.shape[0]
    with torch.autocast(device_type=q.device.type, enabled=False):
        dtype = torch.promote_types(q.dtype, torch.float32)
        q, k, queue = q.to(dtype), k.to(dtype), queue.to(dtype)
        anchors = torch.cat([q, k])  # rows 0..B-1: q→k, rows B..2B-1: k→q
        partners = torch.cat([k, q])
        if detach_pos:
            partners = partners.detach()
        pos = (anchors * partners).sum(1, keepdim=True)  # [2B, 1]
        neg = anchors @ queue.t()  # [2B, K]
        mask = _negative_mask(b, n_queue, q.device, q_labels, queue_labels, mask_same_class, own_index)
        if mask is not None:
            neg.masked_fill_(mask.repeat(2, 1), 0.0)  # mm keeps no copy of its output: in place is safe
        factor = quality_factor(pair_quality(q_scaler, k_scaler, select), threshold, method, scale_range)
        factor = factor.to(dtype).reshape(b, 1).repeat(2, 1)  # [2B, 1], same for both directions
        logits = torch.cat([pos - margin, neg], dim=1).mul_(s).mul_(factor)
        loss = F.cross_entropy(logits, torch.zeros(2 * b, dtype=torch.long, device=q.device))
        if rescale:
            loss = loss * (math.log(129) / math.log(n_queue + 1))
    if not return_stats:
        return loss
    with torch.no_grad():
        hard = neg.detach() if mask is None else neg.detach().masked_fill(mask.repeat(2, 1), float("-inf"))
        hardest = hard.max(dim=1).values
        # mean over rows with an unmasked negative (0 when none), with no boolean indexing: that
        # would read the count on the host, a GPU sync every step
        finite = torch.isfinite(hardest)
        hardest_mean = torch.where(finite, hardest, 0.0).sum() / finite.sum().clamp_min(1)
        return ContrastOutput(loss, (factor != 0).to(dtype).mean(), pos.detach().mean(), hardest_mean)
