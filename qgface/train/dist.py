"""Distributed set-up for the trainer (docs/method.md §5: DDP, one process per device).

``init_distributed()`` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and returns a frozen ``DistInfo``; without them it describes one process. NCCL and
``cuda:<local_rank>`` when CUDA is available, else gloo on the CPU. Nothing happens at import and
nothing is written onto the config. The helpers below are no-ops without a process group, so the
same trainer code runs as one process and under torchrun.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (computed once, read everywhere)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool
    backend: str
    """'nccl', 'gloo', or '' for a single process without a process group"""


def init_distributed(env: Mapping[str, str] | None = None) -> DistInfo:
    """Join the torchrun process group described by ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if world_size > 1:
        if not dist.is_initialized():
            # env:// reads MASTER_ADDR/MASTER_PORT set by torchrun; a long timeout tolerates a slow
            # first batch (synthetic data generation) on one rank
            dist.init_process_group(
                backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30)
            )
    else:
        backend = ""
    return DistInfo(rank, local_rank, world_size, device, rank == 0, backend)


def wrap_ddp(model: torch.nn.Module, device: torch.device, static_graph: bool, compression: str) -> torch.nn.Module:
    """``model`` under DDP (docs/method.md §5), gradients all-reduced in ``compression`` (none, bf16, fp16).

    ``gradient_as_bucket_view``: parameter gradients are views into DDP's communication buckets,
    so the gradients are not held twice (the head's alone is 1.27 GB at WebFace12M) and no copy
    runs before each all-reduce. A compression hook casts each bucket to bf16/fp16 for the
    all-reduce and back, halving the traffic, at half-precision rounding of the averaged gradient.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if compression == "bf16" and device.type != "cuda":
        raise ValueError(
            "train.grad_compression=bf16 needs NCCL on CUDA GPUs (PyTorch has no bf16 all-reduce on "
            "gloo); use fp16 or none"
        )
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        static_graph=static_graph,
    )
    hooks = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}
    if compression != "none":
        ddp.register_comm_hook(dist.group.WORLD, hooks[compression])
    return ddp


def destroy(after_success: bool) -> None:
    """Leave the process group (safe to call when there is none), before the interpreter shuts down.

    Left to interpreter shutdown, the group is destroyed when DDP's reducer (which holds it) is freed
    with the GIL held, and that joins gloo's worker threads; one still releasing its last collective's
    tensors waits for the GIL, which shutdown never gives back, so the rank never exits (seen on the
    2-node test cluster: py-spy showed ``~ProcessGroupGloo`` joining a thread in ``~AsyncAllgatherWork``).
    So: after a successful run, a barrier lets the workers finish and drop their work while this
    thread waits without the GIL (not after a failure: a dead rank would never arrive); garbage
    collection frees the reducer (the caller has dropped its trainer); then the group goes.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if after_success and _active():
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (a new tensor; for logging, not for gradients)."""
    value = value.detach().clone()
    if _active():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def any_rank(flags: Sequence[torch.Tensor]) -> list[bool]:
    """For each 0-dim flag tensor: true on any rank? So every rank takes the same branch (stop, raise).

    The flags stay on their device until the one ``tolist()`` at the end: one tiny collective and
    one host read, however many flags. (The trainer's other per-step syncs: the queue's variable-size
    view, ``ContrastQueue.current``'s ``nonzero``, and with fp16 the GradScaler's inf check.)
    """
    # int32 so that NCCL can reduce it
    t = torch.stack([f.reshape(()).to(torch.int32) for f in flags])
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (on every rank)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (BatchNorm running statistics) into ``module`` on every rank, in place.

    Under DDP each rank's forward updates its own running statistics, and DDP copies rank 0's to the
    others only at the start of the next forward; this makes that copy now (same values, earlier).
    """
    if _active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _active():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather in rank order; backward sums every rank's gradient and keeps the own rows."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        ctx.rows = slice(rank * local.shape[0], (rank + 1) * local.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # an all-reduce, not a reduce-scatter: gloo has no reduce-scatter; the rows are few
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows]


class _SumPassGrad(torch.autograd.Function):
    """SUM all-reduce whose backward is the identity (every rank goes on to the same loss)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class ProcessGroupCollectives:
    """The collectives the sharded margin head needs (``qgface.losses.partial_fc.Collectives``)
    over the default process group; without one, a world of one (identities)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank() if _active() else 0
        self.world_size = dist.get_world_size() if _active() else 1

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        return local if self.world_size == 1 else _GatherWithGrad.apply(local)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.world_size == 1 else _SumPassGrad.apply(value)

    def all_reduce_max(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value
