"""Per-rank memory, step time and bytes moved of the sharded margin head against the replicated one.

    python tools/bench_partial_fc.py --classes 617970 --ranks 4 --batch 32 --rates 1.0 0.3

Runs ``--ranks`` gloo processes on the CPU. "sharded r" is qgface.losses.partial_fc.PartialFCHead
with sample rate r (kernel slice, its gradient and SGD momentum on each rank); "replicated" is
MarginHead under DDP's contract (every rank holds the whole kernel, its gradient and momentum, and
all-reduces the kernel gradient each step, timed here with one SUM all-reduce). Memory is the
growth of the process's peak RSS over the set-up (ru_maxrss), bytes moved are those this rank
sends into collectives per step (counted from the tensors handed to them). Printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from qgface.losses.margin import MarginHead
from qgface.losses.partial_fc import PartialFCHead
from qgface.train.dist import ProcessGroupCollectives


class CountingCollectives(ProcessGroupCollectives):
    """ProcessGroupCollectives that adds up the bytes each forward call hands to a collective."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        # forward sends the local rows; backward all-reduces the gathered gradient (float rows only)
        self.sent += local.nbytes + (local.nbytes * self.world_size if local.requires_grad else 0)
        return super().all_gather(local)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        self.sent += value.nbytes
        return super().all_reduce_sum(value)

    def all_reduce_max(self, value: torch.Tensor) -> torch.Tensor:
        self.sent += value.nbytes
        return super().all_reduce_max(value)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker(rank: int, args: argparse.Namespace, init_file: str, case: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.ranks)
    torch.manual_seed(rank)
    base = _peak_mib()
    emb = F.normalize(torch.randn(args.batch, 512), dim=1).requires_grad_()
    norms = 10 + 10 * torch.rand(args.batch, 1)
    labels = torch.randint(0, args.classes, (args.batch,))
    if case == "replicated":
        comm, head = None, MarginHead("adaface", args.classes)
    else:
        comm = CountingCollectives()
        head = PartialFCHead("adaface", args.classes, comm, sample_rate=float(case.split()[1]))
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    times, sent = [], 0
    for step in range(args.steps + 1):
        dist.barrier()
        start = time.perf_counter()
        loss, _ = head(emb, norms, labels)
        loss.backward()
        if comm is None:  # DDP's all-reduce of the kernel gradient
            dist.all_reduce(head.kernel.grad)
            step_sent = head.kernel.grad.nbytes
        else:
            step_sent, comm.sent = comm.sent, 0
        opt.step()
        opt.zero_grad(set_to_none=False)
        if step:  # the first step allocates the momentum and gradient buffers
            times.append(time.perf_counter() - start)
            sent = step_sent
    peak = _peak_mib() - base
    rows = [None] * args.ranks
    dist.all_gather_object(rows, (peak, sum(times) / len(times), sent))
    if rank == 0:
        peak_max = max(r[0] for r in rows)
        step_s = max(r[1] for r in rows)
        print(f"{case:>12}  C={args.classes:>9,}  per-rank peak +{peak_max:8.0f} MiB  step {step_s * 1e3:8.1f} ms  "
              f"sent/rank/step {sent / 2**20:9.3f} MiB", flush=True)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=617_970)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="embeddings per rank (both views)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.3])
    parser.add_argument("--no-replicated", action="store_true", help="skip the replicated head (it needs ranks x 3 kernels)")
    args = parser.parse_args()
    cases = [f"sharded {r}" for r in args.rates] + ([] if args.no_replicated else ["replicated"])
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_worker, args=(args, os.path.join(tmp, "rendezvous"), case), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
