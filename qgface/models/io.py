"""Load a backbone from a checkpoint file (docs/method.md §1), safely and strictly.

Three layouts are recognised (:func:`read_checkpoint`, the one place that tells them apart):

(a) this project's training checkpoints: ``{"model": <backbone state_dict>, "backbone": <name>, ...}``
    (other keys such as head/optimizer are ignored);
(b) a bare backbone state_dict (``name`` is then required);
(c) AdaFace/QGFace PyTorch-Lightning ``.ckpt``: ``{"state_dict": {"model.<param>": ..., "head.kernel": ...}}``;
    ``model.`` is stripped, ``head.*`` ignored, and the name is inferred from the state dict
    (number of body units, presence of SE keys) when not given.

Files are always read with ``torch.load(weights_only=True)``: a file that needs arbitrary
unpickling (custom classes) is refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Mapping

import torch
from torch import nn

from qgface.models.iresnet import BACKBONES, IResNet, backbone_has_se, backbone_units

log = logging.getLogger(__name__)

_BODY_UNIT = re.compile(r"^body\.(\d+)\.")
_MAX_LISTED = 5


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded (unsafe pickle, unknown layout, key/shape mismatch)."""


ZIP_MAGIC = b"PK\x03\x04"
"""first bytes of a torch.save file (a zip archive since torch 1.6)"""
LEGACY_MAGIC = b"\x80\x02\x8a\x0a"
"""first bytes of a legacy (pre-1.6) torch.save file: a pickle protocol 2 header and torch's magic number"""


def not_a_checkpoint(path: str | os.PathLike) -> str | None:
    """A message saying what ``path`` is when it is not a file written by torch.save, else None."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(ZIP_MAGIC) or head.startswith(LEGACY_MAGIC):
        return None
    return (
        f"checkpoint {os.fspath(path)!r} is not a file written by torch.save (no zip archive or legacy "
        f"torch header; its first bytes are {head!r}): expected a qgface training checkpoint "
        "(<run>/checkpoints/*.pt), an AdaFace/QGFace .ckpt or a backbone state_dict; was it copied "
        "completely?"
    )


def read_checkpoint_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` with one CheckpointError naming the file and what it is."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} does not exist or is not a file")
    problem = not_a_checkpoint(path)
    if problem:
        raise CheckpointError(problem)
    with open(path, "rb") as f:
        zipped = f.read(4) == ZIP_MAGIC
    try:  # a zip archive is memory-mapped: reading one entry (the step) does not read the whole file
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} needs arbitrary unpickling (it stores Python objects other "
            f"than tensors and plain containers) and is refused for safety. If you trust the file, "
            f"extract its backbone state_dict with torch.load(..., weights_only=False) elsewhere and "
            f"save that dict with torch.save."
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} is damaged (torch.load failed: "
            f"{(str(exc).splitlines() or [type(exc).__name__])[0]}); was it copied completely?"
        ) from None


def _is_state_dict(obj: object, allow_empty: bool = False) -> bool:
    return (
        isinstance(obj, Mapping)
        and (allow_empty or len(obj) > 0)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def infer_backbone_name(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Backbone name from a state dict: depth from the number of body units, SE from se_block keys."""
    units = {int(m.group(1)) for k in state_dict if (m := _BODY_UNIT.match(k))}
    se = any(".se_block." in k for k in state_dict)
    for name in BACKBONES:
        if backbone_units(name) == len(units) and backbone_has_se(name) == se:
            return name
    raise CheckpointError(
        f"cannot infer the backbone from a state dict with {len(units)} body units "
        f"({'with' if se else 'without'} SE); pass name= one of {', '.join(BACKBONES)}"
    )


@dataclasses.dataclass(frozen=True)
class CheckpointContents:
    """What one read of a checkpoint file gives: the backbone's weights and the file's metadata."""

    layout: str
    """qgface (a training checkpoint), lightning (AdaFace/QGFace .ckpt) or state_dict (a bare backbone state dict)"""
    state_dict: dict[str, torch.Tensor]
    """the backbone's weights (``model.`` stripped from a Lightning file)"""
    backbone: str | None
    """the saved name (qgface), the one inferred from the weights (lightning), or None (unknown: pass one)"""
    step: int | None = None
    epoch: int | None = None
    config: dict | None = None
    """the run's resolved config (qgface training checkpoints)"""


def read_checkpoint(path: str | os.PathLike) -> CheckpointContents:
    """Read ``path`` once (memory-mapped) and recognise its layout; one CheckpointError naming the file otherwise."""
    path_s = os.fspath(path)
    obj = read_checkpoint_file(path_s)
    if isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"], allow_empty=True):
        saved = obj.get("backbone")
        return CheckpointContents(
            "qgface",
            dict(obj["model"]),
            None if saved is None else str(saved),
            obj.get("step"),
            obj.get("epoch"),
            obj.get("config"),
        )
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = {k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        if not sd:
            raise CheckpointError(
                f"checkpoint {path_s!r}: 'state_dict' has no 'model.*' keys (Lightning layout expected)"
            )
        try:
            inferred: str | None = infer_backbone_name(sd)
        except CheckpointError:
            inferred = None  # only an error if no name is given when the backbone is built
        return CheckpointContents("lightning", sd, inferred, obj.get("global_step"), obj.get("epoch"))
    if _is_state_dict(obj):
        return CheckpointContents("state_dict", dict(obj), None)
    keys = sorted(obj)[:_MAX_LISTED] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"checkpoint {path_s!r} has an unknown layout (top-level: {keys}); expected a dict with 'model' + "
        f"'backbone', a Lightning dict with 'state_dict', or a bare backbone state dict"
    )


def _backbone_name(contents: CheckpointContents, path: str, name: str | None) -> str:
    """The backbone to build: ``name`` where given (a training checkpoint must agree with it), else the file's."""
    if contents.layout == "qgface":
        if name is not None and contents.backbone is not None and contents.backbone != name:
            raise CheckpointError(
                f"checkpoint {path!r} holds backbone {contents.backbone!r}, but name={name!r} was asked for"
            )
        name = name if name is not None else contents.backbone
        if name is None:
            raise CheckpointError(f"checkpoint {path!r} has no 'backbone' key; pass name=")
        return name
    if name is not None:
        return name
    if contents.layout == "lightning":
        name = infer_backbone_name(contents.state_dict)  # raises with the reason when it cannot
        log.info("checkpoint %s: backbone %r inferred from its state dict", path, name)
        return name
    raise CheckpointError(f"checkpoint {path!r} is a bare state dict: pass name= (one of {', '.join(BACKBONES)})")


def _check_keys(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str, name: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} missing: " + ", ".join(f"{k} {tuple(own[k].shape)}" for k in missing[:_MAX_LISTED])
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected: " + ", ".join(f"{k} {tuple(sd[k].shape)}" for k in unexpected[:_MAX_LISTED])
        )
    if wrong:
        parts.append(
            f"{len(wrong)} with a wrong shape: "
            + ", ".join(f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:_MAX_LISTED])
        )
    raise CheckpointError(f"checkpoint {path!r} does not match backbone {name!r}: " + "; ".join(parts))


def load_backbone(
    path: str | os.PathLike, name: str | None = None, contents: CheckpointContents | None = None
) -> IResNet:
    """Build the backbone and load its weights strictly from ``path`` (or from its ``contents`` already read
    by :func:`read_checkpoint`); returned in eval mode."""
    path_s = os.fspath(path)
    contents = contents if contents is not None else read_checkpoint(path_s)
    name = _backbone_name(contents, path_s, name)
    sd = contents.state_dict
    if name not in BACKBONES:
        raise CheckpointError(f"checkpoint {path_s!r}: unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    model = IResNet(name)
    _check_keys(model, sd, path_s, name)
    model.load_state_dict(sd, strict=True)
    return model.eval()
