"""The trainer's side of the sharded margin head (``head.partial_fc``, docs/method.md §3, "Partial FC").

With ``head.partial_fc: true`` the class proxies live outside DDP: DDP wraps only the backbone, and
each rank's ``PartialFCHead`` owns its slice of the kernel (and, through the one SGD optimiser,
only that slice's momentum). :class:`ShardedForward` is what the trainer calls in place of the DDP
model; :func:`check_partial_fc` refuses the settings that would make the ranks disagree.
"""

from __future__ import annotations

import torch
from torch import nn

from qgface.config import Config, ConfigError
from qgface.losses.partial_fc import PartialFCHead


def check_partial_fc(cfg: Config, precision: str) -> None:
    """Raise ConfigError for a setting the sharded head cannot train with (``precision`` resolved)."""
    if not cfg.head.partial_fc:
        if cfg.head.sample_rate < 1.0:  # checked here, not per key: an override may set either key alone
            raise ConfigError(
                f"head.sample_rate={cfg.head.sample_rate!r} needs head.partial_fc=true (class-centre "
                "sampling is part of the sharded head)"
            )
        return
    if cfg.optim.grad_clip > 0:
        raise ConfigError(
            f"optim.grad_clip={cfg.optim.grad_clip} cannot be combined with head.partial_fc=true: each "
            "rank holds another slice of the kernel, so the clipping norms (and the backbones) would "
            "differ between ranks; set optim.grad_clip=0"
        )
    if precision == "fp16":
        raise ConfigError(
            "train.precision resolves to fp16 (loss scaling), which head.partial_fc=true cannot use: "
            "a rank that skips a step for an overflow in its kernel slice would leave the others "
            "behind; set train.precision=bf16 (compute capability 8+) or fp32"
        )


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


class ShardedForward(nn.Module):
    """Backbone (under DDP when distributed) then the sharded head, with the trainer's
    ``(emb, norms, loss_cls, g_hat)`` outputs.

    The head's loss is the global mean over all ranks' rows, so a rank's embeddings receive 1/W of
    the gradient its local mean would give; DDP then averages the backbone gradients over the W ranks.
    The embeddings' gradient is therefore multiplied by W on its way back, which gives the backbone
    exactly the gradient of the replicated head (each rank's loss its local mean, DDP-averaged). The
    kernel slice's gradient is d(global mean)/d(slice), the replicated head's averaged gradient.
    """

    def __init__(self, backbone: nn.Module, head: PartialFCHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, quality_scale: float | None = None
    ) -> tuple[torch.Tensor, ...]:
        emb, norms = self.backbone(x)
        emb, norms = emb.float(), norms.float()  # the loss heads run in fp32 (docs/method.md §5)
        world = self.head.comm.world_size
        scaled = _ScaleGrad.apply(emb, float(world)) if world > 1 else emb
        loss_cls, g_hat = self.head(scaled, norms, labels, quality_scale)
        return emb, norms, loss_cls, g_hat


def kernel_param_index(optimizer: torch.optim.Optimizer, kernel: torch.Tensor) -> int:
    """The index under which ``optimizer.state_dict()`` keeps ``kernel``'s state."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return next(i for i, p in enumerate(params) if p is kernel)
