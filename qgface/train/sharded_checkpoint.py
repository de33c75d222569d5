"""Checkpoints of a ``head.partial_fc`` run: the kernel and its momentum in per-rank shards.

``last.pt`` keeps the format of ``qgface.train.checkpoint`` (so evaluation, export and the
Recognizer read its backbone as from any run), except that its ``head`` holds the head's buffers
only (AdaFace statistics, sampling counter) and its ``optimizer`` lacks the kernel's state. The
kernel and its SGD momentum are written by every rank, in parallel, each file atomically:

    checkpoints/head_shards/step_<N>/rank_<r>.pt   {"kernel" [D, n_r], "momentum" [D, n_r] or None,
                                                    "class_start", "num_local"}
    checkpoints/head_shards/step_<N>/manifest.json {"step", "world_size", "num_classes", "ranges",
                                                    "keep", "files"}

Order of a save: every rank writes its shard; a barrier; rank 0 writes the manifest, then
``last.pt`` (whose ``step`` names the shard folder), then removes the shard folders of earlier steps
that no checkpoint refers to: those of epoch ends and of the current best stay (``epoch_<N>.pt``,
``best.pt`` point at them), a superseded best's go.
A crash anywhere leaves the previous ``last.pt`` and its complete folder in place. Resuming reads the manifest of
``last.pt``'s step: with the same world size each rank loads its own file; with another, each rank
cuts its new contiguous slice (``shard_range``) out of the old shards it overlaps (memory-mapped).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from qgface.atomic import atomic_open, atomic_write_text
from qgface.losses.partial_fc import PartialFCHead, shard_range
from qgface.models import CheckpointError
from qgface.train import dist
from qgface.train.checkpoint import TrainingState
from qgface.train.sharded_head import kernel_param_index

log = logging.getLogger(__name__)

SHARDS = "head_shards"


def shard_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / SHARDS / f"step_{step:09d}"


def write_shard(checkpoints: Path, step: int, head: PartialFCHead, momentum: torch.Tensor | None) -> None:
    """This rank's kernel slice and its momentum, atomically (every rank calls it)."""
    folder = shard_dir(checkpoints, step)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "kernel": head.kernel.detach(),
        "momentum": momentum,
        "class_start": head.class_start,
        "num_local": head.num_local,
    }
    with atomic_open(folder / f"rank_{head.comm.rank}.pt", "wb") as f:
        torch.save(state, f)


KEEP_REASONS = ("epoch", "best")
"""why a step's shards outlive the next save: an epoch end (``epoch_<N>.pt``) or a new best (``best.pt``)"""


def write_manifest(
    checkpoints: Path, step: int, head: PartialFCHead, keep: str | None, ranges: list[tuple[int, int]]
) -> None:
    """Rank 0, after every rank's shard is written: what the step's folder holds; ``keep`` (one of
    ``KEEP_REASONS``, or None) is what :func:`prune_shards` spares it for."""
    if keep is not None and keep not in KEEP_REASONS:
        raise ValueError(f"keep must be None or one of {KEEP_REASONS}, got {keep!r}")
    manifest = {
        "step": step,
        "world_size": len(ranges),
        "num_classes": head.num_classes,
        "ranges": [list(r) for r in ranges],
        "keep": keep,
        "files": [f"rank_{r}.pt" for r in range(len(ranges))],
    }
    atomic_write_text(shard_dir(checkpoints, step) / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def prune_shards(checkpoints: Path, keep_step: int, best_step: int | None) -> None:
    """Remove the shard folders no checkpoint refers to: all but ``keep_step``'s (last.pt's), the
    epoch ends' and ``best_step``'s (best.pt's; the folders of superseded bests go)."""
    root = checkpoints / SHARDS
    for folder in sorted(root.glob("step_*")):
        if folder == shard_dir(checkpoints, keep_step) or (
            best_step is not None and folder == shard_dir(checkpoints, best_step)
        ):
            continue
        try:
            keep = json.loads((folder / "manifest.json").read_text())["keep"]
        except (OSError, ValueError, KeyError):
            keep = None  # an unfinished save (no manifest): never referenced by a checkpoint
        if keep not in ("epoch", True):  # True: an epoch end or a best in manifests before KEEP_REASONS
            shutil.rmtree(folder, ignore_errors=True)


def read_manifest(checkpoints: Path, step: int, num_classes: int, source: Path) -> dict[str, Any]:
    """The manifest of ``step``'s shards, checked against the checkpoint ``source`` and this run."""
    path = shard_dir(checkpoints, step) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint {str(source)!r} was written with head.partial_fc=true but its kernel "
            f"shards' manifest {str(path)!r} cannot be read ({exc.strerror}); copy the run's "
            f"{SHARDS}/ folder along with last.pt"
        ) from None
    except ValueError as exc:
        raise CheckpointError(f"kernel shard manifest {str(path)!r} is not valid JSON: {exc}") from None
    if manifest.get("step") != step:
        raise CheckpointError(
            f"kernel shard manifest {str(path)!r} is for step {manifest.get('step')!r}, "
            f"checkpoint {str(source)!r} for step {step}"
        )
    if manifest.get("num_classes") != num_classes:
        raise CheckpointError(
            f"kernel shard manifest {str(path)!r} holds {manifest.get('num_classes')!r} classes, "
            f"this run's data has {num_classes}"
        )
    return manifest


def load_slice(
    checkpoints: Path, manifest: dict[str, Any], class_start: int, num_local: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(kernel [D, num_local], momentum or None) of classes ``class_start ...`` cut out of the shards
    that overlap them (the same world size reads exactly its own file)."""
    folder = shard_dir(checkpoints, manifest["step"])
    kernels, momenta = [], []
    end = class_start + num_local
    for name, (start, count) in zip(manifest["files"], manifest["ranges"]):
        lo, hi = max(start, class_start), min(start + count, end)
        if lo >= hi:
            continue
        path = folder / name
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # missing, truncated or foreign file: one message naming it
            raise CheckpointError(f"kernel shard {str(path)!r} cannot be loaded: {exc}") from exc
        if (shard["class_start"], shard["num_local"]) != (start, count):
            raise CheckpointError(
                f"kernel shard {str(path)!r} holds classes {shard['class_start']}+"
                f"{shard['num_local']}, its manifest says {start}+{count}"
            )
        kernels.append(shard["kernel"][:, lo - start : hi - start])
        momenta.append(None if shard["momentum"] is None else shard["momentum"][:, lo - start : hi - start])
    if sum(k.shape[1] for k in kernels) != num_local:
        raise CheckpointError(f"the kernel shards in {str(folder)!r} do not cover classes {class_start}..{end - 1}")
    kernel = torch.cat(kernels, 1).clone()
    if any(m is None for m in momenta):
        return kernel, None
    return kernel, torch.cat(momenta, 1).clone()


def save_kernel(
    checkpoints: Path, state: TrainingState, head: PartialFCHead, optimizer: torch.optim.Optimizer, keep: str | None
) -> None:
    """Every rank writes its kernel slice and momentum; rank 0, once all are written, the manifest.
    The kernel and its momentum leave ``state`` (the trainer's, which ``last.pt`` is made of)."""
    index = kernel_param_index(optimizer, head.kernel)
    momentum = state.optimizer["state"].pop(index, {}).get("momentum_buffer")
    state.head.pop("kernel")
    write_shard(checkpoints, state.step, head, momentum)
    dist.barrier()
    if head.comm.rank == 0:
        world = head.comm.world_size
        write_manifest(
            checkpoints, state.step, head, keep, [shard_range(head.num_classes, r, world) for r in range(world)]
        )


def load_kernel(path: Path, state: TrainingState, head: PartialFCHead) -> tuple[dict, torch.Tensor | None]:
    """(head state with this rank's kernel slice, its momentum) from the shards of ``state``'s step
    beside the checkpoint ``path``, re-sharded when they were written by another number of ranks."""
    if "kernel" in state.head:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds the whole kernel (written with "
            "head.partial_fc=false); resume it with head.partial_fc=false"
        )
    folder = Path(path).parent
    manifest = read_manifest(folder, state.step, head.num_classes, Path(path))
    if manifest["world_size"] != head.comm.world_size:
        log.warning(
            "%s: kernel written by %d ranks, re-sharded over %d", path, manifest["world_size"], head.comm.world_size
        )
    kernel, momentum = load_slice(folder, manifest, head.class_start, head.num_local)
    return {**state.head, "kernel": kernel}, momentum
