"""IResNet ("IR") face backbones (docs/method.md §1).

The module tree (and so every parameter/buffer name and shape) follows the layout of the
published AdaFace IR backbones, so their state dicts load without key conversion:

- ``input_layer`` = Sequential(Conv2d 3x3, BatchNorm2d, PReLU)
- ``body`` = one flat Sequential of IR units, each with a ``shortcut_layer`` (MaxPool2d(1, stride)
  when the width is unchanged, else Sequential(Conv2d 1x1, BatchNorm2d)) and a ``res_layer``
  (BN-conv3x3-BN-PReLU-conv3x3-BN, plus ``se_block`` for the SE variants)
- ``output_layer`` = Sequential(BatchNorm2d, Dropout(0.4), Flatten, Linear(C*7*7, 512),
  BatchNorm1d(512, affine=False))

As in AdaFace, ``ir50``/``ir101`` use the basic (two 3x3 conv) unit, not a bottleneck.

``ir_tiny`` is this project's own CPU-sized variant for tests and the laptop demo: one unit per
stage, stage widths 16/32/64/128 (stem 16), the same output-layer logic and a 512-d output. It is
not a published architecture and has no pretrained weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class _Stage(NamedTuple):
    in_channel: int
    depth: int
    num_units: int


_WIDTHS = (64, 128, 256, 512)
_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 101: (3, 13, 30, 3)}
_TINY_WIDTHS = (16, 32, 64, 128)


def _stages(widths: tuple[int, ...], units: tuple[int, ...]) -> list[_Stage]:
    ins = (widths[0],) + widths[:-1]
    return [_Stage(i, d, n) for i, d, n in zip(ins, widths, units)]


# name -> (stage list, squeeze-excitation)
_SPECS: dict[str, tuple[list[_Stage], bool]] = {
    "ir18": (_stages(_WIDTHS, _UNITS[18]), False),
    "ir34": (_stages(_WIDTHS, _UNITS[34]), False),
    "ir50": (_stages(_WIDTHS, _UNITS[50]), False),
    "ir101": (_stages(_WIDTHS, _UNITS[101]), False),
    "ir_se_50": (_stages(_WIDTHS, _UNITS[50]), True),
    "ir_se_101": (_stages(_WIDTHS, _UNITS[101]), True),
    "ir_tiny": (_stages(_TINY_WIDTHS, (1, 1, 1, 1)), False),
}

BACKBONES: tuple[str, ...] = tuple(_SPECS)
EMBEDDING_SIZE = 512


class Flatten(nn.Module):
    """[B, C, H, W] -> [B, C*H*W] (a parameter-free module, kept for the AdaFace index layout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.size(0), -1)


class SEModule(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x))))), 1x1 convs without bias.

    The global average pool is a mean over H, W (the same numbers as AdaptiveAvgPool2d(1), which
    holds no parameters): CUDA's adaptive-pool backward uses atomics and has no deterministic
    version, so ``train.deterministic`` would refuse it; a mean's backward is deterministic.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(pooled))))


class BasicBlockIR(nn.Module):
    """IR unit: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a (strided) shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class BasicBlockIRSE(BasicBlockIR):
    """IR unit with squeeze-excitation appended to the residual branch (key ``res_layer.se_block``)."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__(in_channel, depth, stride)
        self.res_layer.add_module("se_block", SEModule(depth, 16))


class IResNet(nn.Module):
    """IR backbone for 112x112 BGR input normalised to (x/255-0.5)/0.5 (docs/method.md §1).

    ``forward(x)`` returns ``(e, n)``: the L2-normalised embedding [B, 512] and the norm of the
    un-normalised feature [B, 1] (the quality proxy of docs/method.md §3).

    ``activation_checkpointing`` (train.activation_checkpointing): in training with grad enabled,
    each IR unit keeps only its input and recomputes its activations in backward (same loss and
    gradients, much less memory, one more forward of the body). The recomputation leaves the
    BatchNorm running statistics alone, so they move once per step as without it.
    """

    activation_checkpointing: bool = False

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in _SPECS:
            raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
        stages, se = _SPECS[name]
        self.name = name
        stem = stages[0].in_channel
        out_channel = stages[-1].depth
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem)
        )
        unit = BasicBlockIRSE if se else BasicBlockIR
        units: list[nn.Module] = []
        for stage in stages:
            units.append(unit(stage.in_channel, stage.depth, 2))
            units.extend(unit(stage.depth, stage.depth, 1) for _ in range(stage.num_units - 1))
        self.body = nn.Sequential(*units)
        # four stride-2 stages: 112 -> 56 -> 28 -> 14 -> 7
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(out_channel),
            nn.Dropout(0.4),
            Flatten(),
            nn.Linear(out_channel * 7 * 7, EMBEDDING_SIZE),
            nn.BatchNorm1d(EMBEDDING_SIZE, affine=False),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_layer(x)
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            for unit in self.body:
                x = checkpoint(
                    unit, x, use_reentrant=False, context_fn=lambda unit=unit: (nullcontext(), _frozen_bn_stats(unit))
                )
        else:
            x = self.body(x)
        f = self.output_layer(x)
        norm = torch.linalg.vector_norm(f, ord=2, dim=1, keepdim=True)
        return f / norm, norm


@contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` leave their running statistics unchanged (momentum 0) inside."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    try:
        for m in bns:
            m.momentum = 0.0
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def _init_weights(model: nn.Module) -> None:
    """AdaFace init: kaiming-normal (fan_out, relu) for conv/linear, BN weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_backbone(name: str) -> IResNet:
    """Build one of ``BACKBONES`` with fresh AdaFace-style weights (docs/method.md §1)."""
    return IResNet(name)


def backbone_units(name: str) -> int:
    """Number of IR units in ``body`` of the named backbone (used to infer a name from a state dict)."""
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    return sum(s.num_units for s in _SPECS[name][0])


def backbone_has_se(name: str) -> bool:
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    return _SPECS[name][1]
