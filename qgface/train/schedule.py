"""Schedules of the joint objective as pure functions of the epoch (docs/method.md §3, §5).

Each value depends only on the (0-based) epoch index and the config, so a resumed run needs nothing
but its epoch counter to recompute them; :func:`epoch_schedule` bundles them into the value the
trainer hands to every step of the epoch. The engine uses ``torch.optim.lr_scheduler.MultiStepLR``
for the learning rate (its state is checkpointed); ``lr_multiplier`` is the same rule written out,
so it can be documented and tested against MultiStepLR (the trainer logs the optimiser's own lr).
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

from qgface.config import Config
from qgface.losses.queue import queue_size_for


class EpochSchedule(NamedTuple):
    """The joint objective's settings for one epoch; the trainer hands it to every step of the epoch."""

    contrast_weight: float  # w in L = L_cls + w·L_con
    quality_scale: float  # τ_q of the margin head's quality scaler
    queue_size: int  # the newest queue entries used as negatives


def epoch_schedule(epoch: int, cfg: Config, num_views: int, world_batch: int) -> EpochSchedule:
    """The three schedules below at ``epoch`` (``world_batch``: keys one step enqueues over all ranks)."""
    return EpochSchedule(
        contrast_weight=contrast_weight_at(epoch, cfg, num_views),
        quality_scale=quality_scale_at(epoch, cfg),
        queue_size=queue_size_at(epoch, cfg, world_batch),
    )


def lr_multiplier(epoch: int, milestones: list[int], gamma: float) -> float:
    """MultiStepLR: ``gamma ** (number of milestones <= epoch)`` (docs/method.md §5).

    With milestones [12, 20, 24], epochs 0-11 train at the base lr, 12-19 at 0.1x, 20-23 at 0.01x,
    24+ at 0.001x.
    """
    return gamma ** bisect.bisect_right(sorted(milestones), epoch)


def quality_scale_at(epoch: int, cfg: Config) -> float:
    """τ_q of the quality scaler in ``epoch`` (docs/method.md §3).

    Without warm-up (or with ``contrast.joint_point`` = 0) it is ``head.quality_scale`` throughout.
    With ``head.quality_scale_warmup`` it ramps linearly, ``value · epoch / joint_point``, from 0 in
    epoch 0 to the full value from epoch ``joint_point`` on.
    """
    value, ramp = cfg.head.quality_scale, cfg.contrast.joint_point
    if not cfg.head.quality_scale_warmup or ramp <= 0 or epoch >= ramp:
        return value
    return value * epoch / ramp


def contrast_weight_at(epoch: int, cfg: Config, num_views: int) -> float:
    """w in ``L = L_cls + w·L_con`` (docs/method.md §5).

    0 when the contrastive loss is disabled or there is only one view (the baseline), 0 before
    epoch ``contrast.joint_point`` with ``contrast.later_joint``, else ``contrast.weight``.
    """
    c = cfg.contrast
    if not c.enabled or num_views < 2:
        return 0.0
    if c.later_joint and epoch < c.joint_point:
        return 0.0
    return c.weight


def queue_size_at(epoch: int, cfg: Config, world_batch: int) -> int:
    """Effective queue size (number of newest entries used as negatives) in ``epoch`` (docs/method.md §5).

    ``world_batch`` is the number of keys one step enqueues over all ranks (2·B·world_size with two
    views). Without ``contrast.progressive`` it is K (``contrast.queue_size``, or for 0 the size
    ``losses.queue.queue_size_for`` derives from ``world_batch``). With it the size
    starts at ``min(world_batch, K)`` (the smallest queue that still holds the step's own keys) up to
    and including epoch ``joint_point``, grows linearly to reach K in the last epoch
    (``optim.epochs - 1``), and is K from then on:
    ``start + (K - start) · (epoch - joint_point) / (epochs - 1 - joint_point)``, rounded down.
    """
    full = queue_size_for(cfg.contrast.queue_size, cfg.contrast.queue_steps, world_batch)
    if not cfg.contrast.progressive:
        return full
    start = min(world_batch, full)
    first, last = cfg.contrast.joint_point, cfg.optim.epochs - 1
    if epoch <= first:
        return start
    if epoch >= last:
        return full
    return start + (full - start) * (epoch - first) // (last - first)
