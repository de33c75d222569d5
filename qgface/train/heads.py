"""The run's margin head from ``cfg.head`` (docs/method.md §3): replicated, or sharded with Partial FC.

Both heads take the same margin settings, read here from one place; both start from the proxies
:func:`qgface.losses.partial_fc.initial_proxies` draws from ``cfg.seed``, whatever the world size,
so a replicated and a sharded run of one seed start from the same kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from qgface.config import Config, HeadConfig
from qgface.losses import MarginHead
from qgface.losses.partial_fc import PartialFCHead, initial_proxies
from qgface.train.dist import ProcessGroupCollectives


def margin_settings(h: HeadConfig) -> dict[str, Any]:
    """The keyword arguments MarginHead and PartialFCHead share."""
    return {"m": h.m, "h": h.h, "s": h.s, "t_alpha": h.t_alpha, "quality_scale": h.quality_scale}


def build_head(cfg: Config, num_classes: int) -> MarginHead | PartialFCHead:
    """``head.partial_fc``: this rank's slice of the proxies (it stays outside DDP, README "Partial FC");
    otherwise the whole kernel."""
    h = cfg.head
    if h.partial_fc:
        return PartialFCHead(
            h.kind,
            num_classes,
            ProcessGroupCollectives(),
            sample_rate=h.sample_rate,
            seed=cfg.seed,
            **margin_settings(h),
        )
    with torch.random.fork_rng(devices=[]):  # MarginHead draws a kernel of its own; it is replaced below
        head = MarginHead(h.kind, num_classes, chunk_elems=h.chunk_elems, tf32=h.tf32, **margin_settings(h))
    head.kernel.data.copy_(initial_proxies(num_classes, head.kernel.shape[0], cfg.seed, 0, num_classes))
    return head
