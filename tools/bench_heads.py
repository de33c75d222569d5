#!/usr/bin/env python3
"""Benchmark the loss heads on CPU: forward+backward time and peak extra memory (prints, asserts nothing).

Cases (METHOD.md §3/§4 at paper scale):
  head      MarginHead("adaface"), C = 85,742 classes (MS1MV2), N = 512 rows (two views of 256)
  contrast  qg_contrastive_loss, K = 16,384 queue, B = 256 pairs (2B = 512 rows)

How memory is measured (honest, and why): torch's CPU allocator keeps no peak statistics and
tracemalloc does not see it, so every case runs in a fresh subprocess that (1) allocates and
touches its inputs, (2) reads the process's peak resident set size ``ru_maxrss`` as the baseline,
(3) runs ONE forward+backward and reads ``ru_maxrss`` again. The difference is the peak extra
memory of that step, including the parameter gradient that backward allocates. Large tensors
are mmap-ed by glibc and returned to the OS on free, so RSS follows torch's live tensors closely;
small allocator/thread-pool overheads of the first call (a few MiB) are included. Timing is the
median of the following repetitions.

Usage:  python tools/bench_heads.py [--threads 2] [--reps 3] [--case head|contrast|all]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

MIB = 1024 * 1024


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _run_head(reps: int) -> dict:
    from qgface.losses.margin import MarginHead

    n, c, d = 512, 85_742, 512
    head = MarginHead("adaface", c, d, quality_scale=0.5).train()
    emb = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_()
    norms = torch.rand(n, 1) * 30 + 5
    labels = torch.randint(0, c, (n,))

    def step() -> None:
        head.kernel.grad = None
        emb.grad = None
        loss, _ = head(emb, norms, labels)
        loss.backward()

    extra, seconds = _measure(step, reps)
    return {"case": "head", "rows": n, "classes": c, "extra_bytes": extra, "seconds": seconds,
            "logits_bytes": n * c * 4, "kernel_grad_bytes": d * c * 4}


def _measure(step: Callable[[], None], reps: int) -> tuple[int, float]:
    """Peak extra memory of the first call (it allocates everything), then the median time of ``reps`` calls."""
    base = _peak_bytes()
    step()
    extra = _peak_bytes() - base
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return extra, statistics.median(times)


def _run_contrast(reps: int) -> dict:
    from qgface.losses.contrast import qg_contrastive_loss

    b, k, d = 256, 16_384, 512
    q = torch.nn.functional.normalize(torch.randn(b, d), dim=1).requires_grad_()
    kk = torch.nn.functional.normalize(torch.randn(b, d), dim=1).requires_grad_()
    queue = torch.nn.functional.normalize(torch.randn(k, d), dim=1)
    labels = torch.randint(0, 1000, (b,))
    queue_labels = torch.randint(0, 1000, (k,))
    queue_labels[:b], queue_labels[b:2 * b] = labels, labels
    q_s, k_s = torch.rand(b, 1) * 2 - 1, torch.rand(b, 1) * 2 - 1

    def step() -> None:
        q.grad = kk.grad = None
        loss = qg_contrastive_loss(q, kk, queue, q_s, k_s, q_labels=labels, queue_labels=queue_labels)
        loss.backward()

    extra, seconds = _measure(step, reps)
    return {"case": "contrast", "rows": 2 * b, "queue": k, "extra_bytes": extra, "seconds": seconds,
            "logits_bytes": 2 * b * (k + 1) * 4}


def _child(case: str, reps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    result = _run_head(reps) if case == "head" else _run_contrast(reps)
    print(json.dumps(result))


def _report(r: dict) -> None:
    ratio = r["extra_bytes"] / r["logits_bytes"]
    if r["case"] == "head":
        print(f"MarginHead('adaface') N={r['rows']} C={r['classes']:,}: fwd+bwd {r['seconds'] * 1e3:.0f} ms, "
              f"peak extra {r['extra_bytes'] / MIB:.0f} MiB = {ratio:.2f}x the logits tensor "
              f"({r['logits_bytes'] / MIB:.0f} MiB); of which the kernel gradient {r['kernel_grad_bytes'] / MIB:.0f} MiB; "
              f"excluding it {(r['extra_bytes'] - r['kernel_grad_bytes']) / r['logits_bytes']:.2f}x")
    else:
        print(f"qg_contrastive_loss 2B={r['rows']} K={r['queue']:,}: fwd+bwd {r['seconds'] * 1e3:.0f} ms, "
              f"peak extra {r['extra_bytes'] / MIB:.0f} MiB = {ratio:.2f}x the logits tensor "
              f"({r['logits_bytes'] / MIB:.0f} MiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["head", "contrast", "all"], default="all")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.case, args.reps, args.threads)
        return
    for case in (["head", "contrast"] if args.case == "all" else [args.case]):
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--case", case, "--reps", str(args.reps), "--threads", str(args.threads)],
            check=True, capture_output=True, text=True,
        )
        _report(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
