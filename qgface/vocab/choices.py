"""The values each config choice key accepts; the config validates against them and the component
that implements the choice reads the same tuple."""

from __future__ import annotations

VIEW_KINDS = ("lh", "adaface", "flip")
"""data.views (docs/method.md §2)"""
MARGIN_KINDS = ("adaface", "arcface", "cosface")
"""head.kind (docs/method.md §3)"""
QUEUE_MODES = ("proxy", "fifo")
"""contrast.queue (docs/method.md §4)"""
QUALITY_METHODS = ("sgn", "linear", "cos")
"""contrast.method: the shape of the quality factor (docs/method.md §4)"""
SCALE_RANGES = ("half", "whole")
"""contrast.scale_range"""
SELECTS = ("low", "mean", "high")
"""contrast.select: how the pair quality comes from the two views"""
MARGIN_MODES = ("none", "static", "dynamic")
"""contrast.margin_mode"""
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
"""train.precision"""
GRAD_COMPRESSIONS = ("none", "bf16", "fp16")
"""train.grad_compression"""
RESUME_MODES = ("auto", "none")
"""train.resume, besides a checkpoint path"""
