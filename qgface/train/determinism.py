"""``train.deterministic``: bit-exact reruns on a GPU, at some speed cost (README, "On GPUs").

With it on: ``torch.use_deterministic_algorithms(True)``, cuDNN's deterministic kernels and no
autotuning, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS reads when it creates its first
handle and without which deterministic mode raises at the first CUDA matmul. So
:func:`configure_determinism` must run before any CUDA work (the trainer calls it first). With it
off, cuDNN autotunes its convolution algorithms (fast; the chosen kernels, and so the last bits of
every result, may differ between runs).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

import torch

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS workspace setting that makes its matmuls reproducible (CUDA docs, "Results reproducibility")"""


def configure_determinism(deterministic: bool, env: MutableMapping[str, str] | None = None) -> None:
    """Switch this process to deterministic (or fast, autotuned) kernels."""
    if deterministic:
        env = os.environ if env is None else env
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
