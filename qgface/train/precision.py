"""The training precision: which autocast dtype the backbone runs in and whether loss scaling is on.

``train.precision=auto`` (the default) picks bf16 on GPUs of compute capability 8 or later
(A100, H100, H200: bf16 has fp32's range, so no loss scaling is needed) and fp16 with a dynamic
GradScaler on older ones (V100, T4), where bf16 is emulated and slow. fp32 is exact but does not fit
the paper's batch on an 80 GB GPU (README, "Precision"). On a CPU the backbone always runs in fp32:
autocast and the scaler are built disabled, so the step has one code path (docs/method.md §5).
"""

from __future__ import annotations

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` made concrete for ``device``: bf16, fp16 or fp32."""
    if device.type != "cuda":
        return "fp32"
    return precision_for_capability(precision, torch.cuda.get_device_capability(device))


def precision_for_capability(precision: str, capability: tuple[int, int]) -> str:
    """``train.precision`` on a CUDA GPU of compute capability ``(major, minor)``."""
    if precision == "auto":
        return "bf16" if capability[0] >= 8 else "fp16"
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"train.precision must be auto, bf16, fp16 or fp32; got {precision!r}")
    return precision


def build_autocast(precision: str, device: torch.device) -> torch.autocast:
    """The backbone's autocast context for a resolved ``precision`` (disabled for fp32)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision], enabled=precision != "fp32")


def build_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A dynamic loss scaler, enabled only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
