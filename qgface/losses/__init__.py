"""Loss heads (docs/method.md §3, §4): margin classification with the quality scaler, the quality-guided
contrastive loss and its queue. Nothing here knows about data, training or Slurm."""

from __future__ import annotations

from qgface.losses.contrast import ContrastOutput, qg_contrastive_loss, quality_factor
from qgface.losses.margin import MARGIN_KINDS, MarginHead
from qgface.losses.queue import ContrastQueue, gather_own_first

__all__ = [
    "MARGIN_KINDS",
    "ContrastOutput",
    "ContrastQueue",
    "MarginHead",
    "gather_own_first",
    "qg_contrastive_loss",
    "quality_factor",
]
