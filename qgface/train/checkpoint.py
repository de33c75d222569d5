"""Training checkpoints: format, atomic save, strict load, RNG capture, resume resolution (see README).

A checkpoint is one ``torch.save`` dict (the fields of :class:`TrainingState`), loadable with
``torch.load(weights_only=True)``, so every value is a tensor, a number, a string, None or a
list/dict of those:

- ``format_version`` (1), ``backbone`` (model name), ``model`` / ``head`` / ``queue`` (state dicts,
  the queue None without the contrastive loss), ``optimizer``, ``scheduler``, ``scaler``;
- ``epoch`` (the epoch to continue in, 0-based), ``batch_in_epoch`` (batches of it already done),
  ``step`` (optimiser steps done in total);
- ``rng``: one entry per rank (rank order) with the torch, CUDA, numpy and Python states, so a
  resumed rank continues its own streams (dropout draws, anything seeded per rank); the data views
  need no entry here because the data pipeline seeds them from (seed, epoch, index);
- ``config`` (``cfg.to_dict()``), ``finished`` (training completed);
- ``validation``: the best validation value so far, ``{metric, value, step}`` (None without
  ``eval.every_steps``), so a resumed run keeps choosing ``best.pt`` against it (train/validation.py).

Writes go through ``qgface.atomic.atomic_open``: ``last.pt`` is always the complete previous or the
complete new file, never a partial one. At scale a checkpoint is ~3 GB (the WebFace12M class proxies
and their momentum), so an epoch end writes it once: ``epoch_<N>.pt`` is a hard link to the new
``last.pt`` (a copy only where the filesystem refuses links), and loading maps the file (``mmap``)
instead of reading it, so the ranks of a node share its pages in the page cache.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qgface.atomic import atomic_open, fsync_dir
from qgface.config import Config
from qgface.models import CheckpointError
from qgface.models.io import read_checkpoint_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """What a training checkpoint holds; its fields are the file's keys (the module docstring says
    what each means). A field with a default was added after format 1 was first written: an older
    checkpoint without it stands for the default."""

    format_version: int
    backbone: str
    model: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    queue: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    epoch: int
    step: int
    batch_in_epoch: int
    rng: list[dict[str, Any]]
    config: dict[str, Any]
    finished: bool
    validation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The file's dict (shallow: the tensors are shared, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


KEYS = tuple(f.name for f in fields(TrainingState))
_REQUIRED = tuple(f.name for f in fields(TrainingState) if f.default is MISSING)


def checkpoint_dir(cfg: Config) -> Path:
    return cfg.resolved_run_dir() / "checkpoints"


def save_checkpoint(path: str | Path, state: TrainingState) -> None:
    """Write ``state`` atomically to ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(state.to_dict(), f)


def link_or_copy(source: str | Path, target: str | Path) -> bool:
    """Make ``target`` the same file as ``source`` atomically: a hard link, or a copy where links fail.

    True when linked. A link costs no I/O; later atomic replacements of ``source`` (a new
    ``last.pt``) give it a new inode and leave ``target`` holding this one. A copy is taken when
    the filesystem cannot link (no link support, another device, a link-count limit).
    """
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)  # left by a process with this pid that died between link and rename
    try:
        os.link(source, tmp)
        linked = True
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        log.warning("cannot hard-link %s to %s (%s): copying it instead", source, target, exc.strerror)
        with open(source, "rb") as src, atomic_open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        return False
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return linked


def load_checkpoint(path: str | Path) -> TrainingState:
    """Read a training checkpoint with ``weights_only=True`` and check its keys and version.

    The file is memory-mapped (``torch.load(mmap=True)``): tensors are read from the page cache when
    used, so ranks of one node that load the same checkpoint share one copy of its pages. Tensors
    are private mappings (copy on write), so changing them never changes the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check train.resume")
    state = read_checkpoint_file(path)  # memory-mapped; one message naming the file and what it is
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a training checkpoint (top level {type(state).__name__})"
        )
    missing = [k for k in _REQUIRED if k not in state]
    extra = [k for k in state if k not in KEYS]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks key {missing[0]!r} (all missing: {missing})")
    if extra:
        raise CheckpointError(f"checkpoint {str(path)!r} has unexpected key {extra[0]!r} (all unexpected: {extra})")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format_version {state['format_version']!r}; "
            f"this qgface reads {FORMAT_VERSION}"
        )
    return TrainingState(**state)


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, part: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming the file, part and key."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        what = f"lacks key {part}.{missing[0]}" if missing else f"has unexpected key {part}.{extra[0]}"
        raise CheckpointError(
            f"checkpoint {str(path)!r} {what} (missing {len(missing)}, unexpected {len(extra)}); "
            f"was it written with a different model.backbone, head or contrast setting?"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatch, e.g. another number of classes
        raise CheckpointError(f"checkpoint {str(path)!r}: '{part}' does not fit this run: {exc}") from exc


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, mt, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": {
            "kind": kind,
            "keys": [int(x) for x in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [version, list(mt), py_gauss],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))


def resume_path(cfg: Config) -> Path | None:
    """The checkpoint to continue from: ``train.resume`` auto (``last.pt`` if present), none, or a path."""
    mode = cfg.train.resume
    if mode == "none":
        return None
    if mode == "auto":
        last = checkpoint_dir(cfg) / "last.pt"
        return last if last.is_file() else None
    path = Path(mode)
    if not path.is_file():
        raise CheckpointError(f"train.resume={mode!r}: no such checkpoint file")
    return path
