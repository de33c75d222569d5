#!/usr/bin/env python3
"""Benchmark the loss heads on CPU: forward+backward time and peak extra memory (prints, asserts nothing).

Cases (docs/method.md §3/§4 at paper scale):
  head      MarginHead("adaface"), C = 85,742 classes (MS1MV2), N = 512 rows (two views of 256)
  dense     the reference for ``head``: the same loss written the plain way AdaFace's own head does it
            (normalised kernel copy, full [N, C] logits, acos/cos and a one-hot over the whole matrix,
            autograd); ``head`` is reported as a fraction of its time and memory
  contrast  qg_contrastive_loss, K = 16,384 queue, B = 256 pairs (2B = 512 rows)

How memory is measured (honest, and why): torch's CPU allocator keeps no peak statistics and
tracemalloc does not see it, so every case runs in a fresh subprocess that (1) allocates and
touches its inputs, (2) reads the process's peak resident set size ``ru_maxrss`` as the baseline,
(3) runs ONE forward+backward and reads ``ru_maxrss`` again. The difference is the peak extra
memory of that step, including the parameter gradient that backward allocates. Large tensors
are mmap-ed by glibc and returned to the OS on free, so RSS follows torch's live tensors closely;
small allocator/thread-pool overheads of the first call (a few MiB) are included. Timing is the
median of the following repetitions, as wall time and as the process's CPU time (threads summed;
the fairer figure on a machine shared with other jobs).

Usage:  python tools/bench_heads.py [--threads 2] [--reps 3] [--case head|contrast|all]

``--partial-fc``: the sharded margin head (head.partial_fc, qgface.losses.partial_fc) on ``--ranks``
gloo processes on the CPU, at each of ``--classes``: "sharded r" is PartialFCHead with sample rate
r (kernel slice, its gradient and SGD momentum on each rank); "replicated" is MarginHead under
DDP's contract (every rank holds the whole kernel, its gradient and momentum, and all-reduces the
kernel gradient each step, timed here as one SUM all-reduce). Per rank: the growth of the peak RSS
over the set-up (ru_maxrss), the step time (forward, backward, collectives, SGD step; the slowest
rank), and the bytes this rank hands to collectives per step (counted from the tensors).

        python tools/bench_heads.py --partial-fc --classes 617970 2059906 --ranks 4 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from bench_support.fresh_process import run_case  # tools/bench_support/

MIB = 1024 * 1024


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _run_head(reps: int, dense: bool, chunk_elems: int) -> dict:
    from qgface.losses.margin import MarginHead

    n, c, d = 512, 85_742, 512
    head = MarginHead("adaface", c, d, quality_scale=0.5, chunk_elems=chunk_elems).train()
    emb = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_()
    norms = torch.rand(n, 1) * 30 + 5
    labels = torch.randint(0, c, (n,))

    def step() -> None:
        head.kernel.grad = None
        emb.grad = None
        loss = _dense_loss(head, emb, norms, labels) if dense else head(emb, norms, labels)[0]
        loss.backward()

    extra, seconds, cpu_seconds = _measure(step, reps)
    return {
        "case": "dense" if dense else "head",
        "rows": n,
        "classes": c,
        "extra_bytes": extra,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "logits_bytes": n * c * 4,
        "kernel_grad_bytes": d * c * 4,
        "chunk_rows": head.chunk_rows(),
    }


def _dense_loss(head, emb: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """docs/method.md §3 the way AdaFace's head computes it: dense [N, C] margins from a one-hot."""
    import math

    from qgface.losses.margin import EPS

    g_hat = head.current_g_hat(norms)
    w = torch.nn.functional.normalize(head.kernel, dim=0)
    cos = (emb @ w).clamp(-1 + EPS, 1 - EPS)
    onehot = torch.zeros_like(cos).scatter_(1, labels[:, None], 1.0)
    theta = (cos.acos() - onehot * (head.m * g_hat)).clamp(EPS, math.pi - EPS)
    z = theta.cos() - onehot * (head.m + head.m * g_hat)
    z = z * head._row_scale(g_hat)
    return torch.nn.functional.cross_entropy(z, labels)


def _measure(step: Callable[[], None], reps: int) -> tuple[int, float, float]:
    """Peak extra memory of the first call (it allocates everything), then the median wall and CPU
    times of ``reps`` calls."""
    base = _peak_bytes()
    step()
    extra = _peak_bytes() - base
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return extra, statistics.median(wall), statistics.median(cpu)


def _run_contrast(reps: int) -> dict:
    from qgface.losses.contrast import qg_contrastive_loss

    b, k, d = 256, 16_384, 512
    q = torch.nn.functional.normalize(torch.randn(b, d), dim=1).requires_grad_()
    kk = torch.nn.functional.normalize(torch.randn(b, d), dim=1).requires_grad_()
    queue = torch.nn.functional.normalize(torch.randn(k, d), dim=1)
    labels = torch.randint(0, 1000, (b,))
    queue_labels = torch.randint(0, 1000, (k,))
    queue_labels[:b], queue_labels[b : 2 * b] = labels, labels
    q_s, k_s = torch.rand(b, 1) * 2 - 1, torch.rand(b, 1) * 2 - 1

    def step() -> None:
        q.grad = kk.grad = None
        loss = qg_contrastive_loss(q, kk, queue, q_s, k_s, q_labels=labels, queue_labels=queue_labels)
        loss.backward()

    extra, seconds, cpu_seconds = _measure(step, reps)
    return {
        "case": "contrast",
        "rows": 2 * b,
        "queue": k,
        "extra_bytes": extra,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "logits_bytes": 2 * b * (k + 1) * 4,
    }


def _child(case: str, reps: int, threads: int, chunk_elems: int) -> None:
    torch.set_num_threads(threads)
    if case == "contrast":
        result = _run_contrast(reps)
    else:
        result = _run_head(reps, dense=case == "dense", chunk_elems=chunk_elems)
    print(json.dumps(result))


def _report(r: dict, reference: dict | None) -> None:
    ratio = r["extra_bytes"] / r["logits_bytes"]
    if r["case"] in ("head", "dense"):
        name = "dense reference" if r["case"] == "dense" else f"MarginHead('adaface') ({r['chunk_rows']} rows/chunk)"
        print(
            f"{name} N={r['rows']} C={r['classes']:,}: fwd+bwd {r['seconds'] * 1e3:.0f} ms "
            f"(CPU time {r['cpu_seconds'] * 1e3:.0f} ms), "
            f"peak extra {r['extra_bytes'] / MIB:.0f} MiB = {ratio:.2f}x the logits tensor "
            f"({r['logits_bytes'] / MIB:.0f} MiB); "
            f"of which the kernel gradient {r['kernel_grad_bytes'] / MIB:.0f} MiB; "
            f"excluding it {(r['extra_bytes'] - r['kernel_grad_bytes']) / r['logits_bytes']:.2f}x"
        )
        if reference is not None and r["case"] == "head":
            print(
                f"  = {r['seconds'] / reference['seconds']:.2f}x the dense reference's wall time, "
                f"{r['cpu_seconds'] / reference['cpu_seconds']:.2f}x its CPU time, "
                f"{r['extra_bytes'] / reference['extra_bytes']:.2f}x its peak extra memory"
            )
    else:
        print(
            f"qg_contrastive_loss 2B={r['rows']} K={r['queue']:,}: fwd+bwd {r['seconds'] * 1e3:.0f} ms "
            f"(CPU time {r['cpu_seconds'] * 1e3:.0f} ms), "
            f"peak extra {r['extra_bytes'] / MIB:.0f} MiB = {ratio:.2f}x the logits tensor "
            f"({r['logits_bytes'] / MIB:.0f} MiB)"
        )


def _sharded_worker(rank: int, args: argparse.Namespace, init_file: str, classes: int, case: str) -> None:
    """One gloo rank of a --partial-fc case: a few head steps, then rank 0 prints the case's line."""
    import torch.distributed as dist

    from qgface.losses.margin import MarginHead
    from qgface.losses.partial_fc import PartialFCHead
    from qgface.train.dist import ProcessGroupCollectives

    class CountingCollectives(ProcessGroupCollectives):
        """Adds up the bytes each call hands to a collective."""

        sent = 0

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

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.ranks)
    torch.manual_seed(rank)
    base = _peak_bytes()
    emb = torch.nn.functional.normalize(torch.randn(args.batch, 512), dim=1).requires_grad_()
    norms = 10 + 10 * torch.rand(args.batch, 1)
    labels = torch.randint(0, classes, (args.batch,))
    if case == "replicated":
        comm, head = None, MarginHead("adaface", classes)
    else:
        comm = CountingCollectives()
        head = PartialFCHead("adaface", classes, comm, sample_rate=float(case.split()[1]))
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    times, sent = [], 0
    for step in range(args.reps + 1):
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
    rows: list = [None] * args.ranks
    dist.all_gather_object(rows, (_peak_bytes() - base, statistics.median(times), sent))
    if rank == 0:
        peak = max(r[0] for r in rows) / MIB
        print(
            f"{case:>12}  C={classes:>9,}  ranks {args.ranks}  per-rank peak +{peak:7.0f} MiB  "
            f"step {max(r[1] for r in rows) * 1e3:8.1f} ms  sent/rank/step {sent / MIB:9.3f} MiB",
            flush=True,
        )
    dist.destroy_process_group()


def _partial_fc(args: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    for classes in args.classes:
        for case in [f"sharded {r}" for r in args.rates] + ([] if args.no_replicated else ["replicated"]):
            with tempfile.TemporaryDirectory() as tmp:
                mp.spawn(
                    _sharded_worker,
                    args=(args, os.path.join(tmp, "rendezvous"), classes, case),
                    nprocs=args.ranks,
                    join=True,
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["head", "dense", "contrast", "all"], default="all")
    p.add_argument("--partial-fc", action="store_true", help="benchmark the sharded head on gloo ranks instead")
    p.add_argument("--classes", type=int, nargs="+", default=[617_970, 2_059_906], help="--partial-fc: class counts")
    p.add_argument("--ranks", type=int, default=4, help="--partial-fc: gloo processes")
    p.add_argument("--batch", type=int, default=32, help="--partial-fc: embeddings per rank (both views)")
    p.add_argument(
        "--rates", type=float, nargs="*", default=[1.0, 0.3], help="--partial-fc: sample rates (none: replicated only)"
    )
    p.add_argument(
        "--no-replicated",
        action="store_true",
        help="--partial-fc: skip the replicated head (each rank holds the kernel 3 times)",
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk-elems", type=int, default=0, help="head.chunk_elems (0 = the CPU default)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.partial_fc:
        _partial_fc(args)
        return
    if args.child:
        _child(args.case, args.reps, args.threads, args.chunk_elems)
        return
    reference = None
    for case in ["dense", "head", "contrast"] if args.case == "all" else [args.case]:
        child_args = ["--case", case, "--reps", str(args.reps), "--threads", str(args.threads)]
        result = run_case(__file__, [*child_args, "--chunk-elems", str(args.chunk_elems)], args.threads)
        reference = result if case == "dense" else reference
        _report(result, reference)


if __name__ == "__main__":
    main()
