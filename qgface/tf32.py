"""The TF32 policy of float32 matmuls and convolutions on CUDA, as a context (docs/method.md §3, §7).

TF32 keeps 10 mantissa bits: on an Ampere-or-later GPU it makes fp32 matmuls and convolutions
several times faster at ~1e-3 relative error. The trainer's margin head (``head.tf32``) and the
evaluator (``eval.tf32``) each state their choice through :func:`tf32_policy`, which sets PyTorch's
process-wide flags for the duration of a block and restores them after, so neither depends on
what another part of the program left behind. On a CPU the flags exist and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def tf32_policy(matmul: bool | None = None, conv: bool | None = None) -> Iterator[None]:
    """Within the block, fp32 CUDA matmuls / cuDNN convolutions use TF32 iff ``matmul`` / ``conv``.

    ``None`` leaves that flag as it is.
    """
    flags = []
    if matmul is not None:
        flags.append((torch.backends.cuda.matmul, matmul))
    if conv is not None:
        flags.append((torch.backends.cudnn.conv, conv))
    saved = [(backend, backend.fp32_precision) for backend, _ in flags]
    try:
        for backend, on in flags:
            backend.fp32_precision = "tf32" if on else "ieee"
        yield
    finally:
        for backend, value in saved:
            backend.fp32_precision = value
