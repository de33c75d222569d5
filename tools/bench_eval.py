#!/usr/bin/env python3
"""Benchmark the evaluation metrics at full benchmark scale on CPU (prints, asserts nothing).

Cases (docs/method.md §7), all with random 512-d float32 features:
  cmc   TinyFace identification: 3,728 probes x (4,443 matches + 153,428 distractors) gallery;
        total qgface.eval.metrics.cmc time vs the bare probe x gallery matmul (chunked as cmc does,
        and in one call), and cmc's peak extra memory. Targets: time <= 1.5x matmul, peak <= 1.5 GB.
  hq    five HQ sets of 6,000 pairs: 10-fold verification_accuracy of all five. Target < 0.4 s.
  ijb   IJB-B: template pooling of 227,630 image features into 12,115 templates, cosine scores of
        8,010,270 template pairs, and TAR@FAR (sklearn roc_curve).

Memory is measured honestly: each case runs in a fresh subprocess that allocates and touches its
inputs, reads its peak resident set size (``ru_maxrss``) as the baseline, runs the computation once,
and reads ``ru_maxrss`` again; the difference is the peak extra memory of the computation. Times are
the best of ``--reps`` further runs.

Usage:  python tools/bench_eval.py [--threads 2] [--reps 3] [--case cmc|hq|ijb|all]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from bench_support.fresh_process import run_case  # tools/bench_support/

MIB = 1024 * 1024
DIM = 512


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _best(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _case_cmc(reps: int) -> dict:
    from qgface.eval.metrics import _CMC_CHUNK_BYTES, cmc, l2_normalize

    rng = np.random.default_rng(0)
    probes, matches, distractors = 3728, 4443, 153428
    gallery = rng.standard_normal((matches + distractors, DIM), dtype=np.float32)
    gallery_labels = np.concatenate([np.arange(matches) % 2500, -np.ones(distractors, np.int64)])
    probe_labels = rng.integers(0, 2500, probes)
    probe = rng.standard_normal((probes, DIM), dtype=np.float32)
    probe += 0.2 * gallery[probe_labels]  # some signal, so ranks vary
    base = _peak_bytes()
    start = time.perf_counter()
    result = cmc(probe, gallery, probe_labels, gallery_labels)
    first = time.perf_counter() - start
    peak = _peak_bytes() - base
    total = min(
        first, _best(lambda: cmc(probe, gallery, probe_labels, gallery_labels), reps - 1) if reps > 1 else first
    )
    p_n, g_n = l2_normalize(probe, np.float32), l2_normalize(gallery, np.float32)
    chunk = max(1, _CMC_CHUNK_BYTES // (4 * len(gallery)))

    def chunked():
        for s in range(0, probes, chunk):
            p_n[s : s + chunk] @ g_n.T

    matmul_chunked = _best(chunked, reps)
    matmul_full = _best(lambda: p_n @ g_n.T, reps)
    return {
        "rank1_5_20": [round(float(x), 4) for x in result],
        "cmc_s": total,
        "matmul_chunked_s": matmul_chunked,
        "matmul_full_s": matmul_full,
        "ratio_to_chunked_matmul": total / matmul_chunked,
        "ratio_to_full_matmul": total / matmul_full,
        "peak_extra_mib": peak / MIB,
        "chunk_rows": chunk,
    }


def _case_hq(reps: int) -> dict:
    from qgface.eval.metrics import verification_accuracy

    rng = np.random.default_rng(1)
    sets = []
    for _ in range(5):
        issame = rng.random(6000) < 0.5
        emb = rng.standard_normal((12000, DIM), dtype=np.float32)
        emb[1::2][issame] += 1.5 * emb[0::2][issame]
        sets.append((emb, issame))
    accs = [float(verification_accuracy(e, s)[0].mean()) for e, s in sets]
    seconds = _best(lambda: [verification_accuracy(e, s) for e, s in sets], reps)
    return {"five_sets_s": seconds, "mean_accuracy": [round(a, 4) for a in accs]}


def _case_ijb(reps: int) -> dict:
    from qgface.eval.benchmarks.ijb import FARS, pair_scores, template_features
    from qgface.eval.metrics import tar_at_far

    rng = np.random.default_rng(2)
    images, templates, pairs, genuine = 227630, 12115, 8010270, 10270
    template_of_image = np.sort(rng.integers(0, templates, images))
    template_of_image[:templates] = np.arange(templates)  # every template has an image
    media = rng.integers(0, 5, images) + 10 * template_of_image
    feats = rng.standard_normal((images, DIM), dtype=np.float32)
    scores_det = rng.uniform(0.5, 1.0, images)
    base = _peak_bytes()
    start = time.perf_counter()
    ids, tfeats = template_features(feats, template_of_image, media, scores_det)
    pooling = time.perf_counter() - start
    first = rng.integers(0, templates, pairs)
    second = rng.integers(0, templates, pairs)
    labels = np.zeros(pairs, dtype=np.int64)
    labels[:genuine] = 1
    second[:genuine] = first[:genuine]  # genuine pairs: same template, score 1
    start = time.perf_counter()
    scores = pair_scores(tfeats, first, second)
    scoring = time.perf_counter() - start
    start = time.perf_counter()
    tar = tar_at_far(scores, labels, FARS.values())
    tar_s = time.perf_counter() - start
    peak = _peak_bytes() - base
    scoring = min(scoring, _best(lambda: pair_scores(tfeats, first, second), reps - 1) if reps > 1 else scoring)
    return {
        "template_pooling_s": pooling,
        "pair_scoring_s": scoring,
        "tar_at_far_s": tar_s,
        "peak_extra_mib": peak / MIB,
        "tar_at_1e-4": tar[1e-4],
        "templates": int(len(ids)),
    }


CASES = {"cmc": _case_cmc, "hq": _case_hq, "ijb": _case_ijb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--case", default="all", choices=[*CASES, "all"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(CASES[args.case](args.reps)))
        return
    env_note = f"threads={args.threads}"
    for case in CASES if args.case == "all" else [args.case]:
        child_args = ["--case", case, "--reps", str(args.reps), "--threads", str(args.threads)]
        result = run_case(__file__, child_args, args.threads)
        print(f"[{case}] ({env_note})")
        for key, value in result.items():
            print(f"  {key:26s} {value:.3f}" if isinstance(value, float) else f"  {key:26s} {value}")


if __name__ == "__main__":
    main()
