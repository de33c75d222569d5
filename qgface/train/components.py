"""What the trainer is made of, each built from the config: the training data's step counts, the model
(backbone + margin head), the optimiser with its learning-rate schedule, and the contrast queue.

``qgface.train.engine.Trainer`` assembles these and runs the steps; building them here keeps each
recipe (docs/method.md §1-§5) readable on its own and usable without a trainer.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from qgface.config import Config, ConfigError
from qgface.losses import ContrastQueue, MarginHead
from qgface.losses.partial_fc import PartialFCHead
from qgface.losses.queue import MIN_HISTORY_STEPS, history_steps, queue_size_for
from qgface.models import build_backbone
from qgface.train.heads import build_head

log = logging.getLogger(__name__)

FUSED_SGD_DEVICES = ("cuda", "cpu")
"""device types with a fused SGD kernel (torch >= 2.4); others use the default (foreach) one"""


class FaceModel(nn.Module):
    """Backbone + margin head as one module (one optimiser, one checkpoint). DDP wraps it whole, so it
    averages the class proxies' gradients too, unless the head is sharded (``head.partial_fc``):
    then DDP wraps the backbone alone."""

    def __init__(self, backbone: nn.Module, head: MarginHead | PartialFCHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, quality_scale: float | None = None
    ) -> tuple[torch.Tensor, ...]:
        emb, norms = self.backbone(x)
        emb, norms = emb.float(), norms.float()  # the loss heads run in fp32 (docs/method.md §5)
        loss_cls, g_hat = self.head(emb, norms, labels, quality_scale)
        return emb, norms, loss_cls, g_hat


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every parameter (convs, linear, PReLU, class proxies) except BN's (docs/method.md §5).

    The same split as AdaFace's ``split_parameters``: parameters of BatchNorm layers get none.
    """
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    decay = [p for p in model.parameters() if id(p) not in bn]
    no_decay = [p for p in model.parameters() if id(p) in bn]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_data_root(cfg: Config) -> str:
    """``data.root``, or the synthetic training set (generated once, under a file lock) when it is empty."""
    if cfg.data.root:
        return cfg.data.root
    from qgface.data.synthetic import ensure_synthetic

    return str(ensure_synthetic(cfg))


def step_counts(cfg: Config, per_rank: int, root: str) -> tuple[int, int]:
    """(optimiser steps per epoch, in total) for ``per_rank`` training images per rank in ``root``."""
    batch = cfg.data.batch_size
    if batch % cfg.train.grad_accum:
        raise ConfigError(f"data.batch_size={batch} must be a multiple of train.grad_accum={cfg.train.grad_accum}")
    epoch_steps = per_rank // batch
    if epoch_steps == 0:
        raise ConfigError(f"data.batch_size={batch} exceeds the {per_rank} images per rank of {root}")
    if cfg.train.steps_per_epoch:
        epoch_steps = min(epoch_steps, cfg.train.steps_per_epoch)
    total_steps = cfg.optim.epochs * epoch_steps
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    return epoch_steps, total_steps


def build_model(cfg: Config, num_classes: int, device: torch.device, channels_last: bool) -> FaceModel:
    """Backbone and margin head (docs/method.md §1, §3) on ``device``, with the train.* memory knobs."""
    head = build_head(cfg, num_classes)  # first: the backbone's initial weights come from the seeded stream
    backbone = build_backbone(cfg.model.backbone)
    backbone.activation_checkpointing = cfg.train.activation_checkpointing
    model = FaceModel(backbone, head).to(device)
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model.backbone.compile()  # in place: parameter names (and checkpoints) stay the same
    return model


def build_optimizer(
    model: nn.Module, cfg: Config, device: torch.device
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """SGD with momentum and the BN-free weight decay, stepped down at ``optim.milestones`` (docs/method.md §5)."""
    o = cfg.optim
    fused = cfg.train.fused_optimizer and device.type in FUSED_SGD_DEVICES
    optimizer = torch.optim.SGD(param_groups(model, o.weight_decay), lr=o.lr, momentum=o.momentum, fused=fused or None)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=o.milestones, gamma=o.gamma)


def build_queue(
    cfg: Config, num_views: int, world_keys: int, world_size: int, is_main: bool, device: torch.device
) -> ContrastQueue | None:
    """The contrast queue (docs/method.md §4), None without the contrastive loss. ``world_keys``: the
    keys one step enqueues over all ``world_size`` ranks; raises for a queue that cannot hold them."""
    c = cfg.contrast
    if not c.enabled or num_views < 2:
        return None
    size = queue_size_for(c.queue_size, c.queue_steps, world_keys)
    if size < world_keys:
        raise ConfigError(
            f"contrast.queue_size={c.queue_size} cannot hold one step's {world_keys} keys "
            f"(2 views x data.batch_size x {world_size} ranks); raise it, or set 0 "
            "to derive it from contrast.queue_steps"
        )
    if is_main and history_steps(size, world_keys) < MIN_HISTORY_STEPS:
        log.warning(
            "contrast.queue_size=%d holds %.1f steps of %d keys (fewer than %d): the negatives are "
            "mostly this step's own; set contrast.queue_size=0 to keep contrast.queue_steps=%d steps",
            size,
            history_steps(size, world_keys),
            world_keys,
            MIN_HISTORY_STEPS,
            c.queue_steps,
        )
    return ContrastQueue(size, mode=c.queue, t_alpha=cfg.head.t_alpha).to(device)
