"""Face backbones (docs/method.md §1): IR networks and safe checkpoint loading."""

from __future__ import annotations

from qgface.models.io import CheckpointError, infer_backbone_name, load_backbone
from qgface.models.iresnet import BACKBONES, EMBEDDING_SIZE, IResNet, build_backbone

__all__ = [
    "BACKBONES",
    "EMBEDDING_SIZE",
    "CheckpointError",
    "IResNet",
    "build_backbone",
    "infer_backbone_name",
    "load_backbone",
]
