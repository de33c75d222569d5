#!/usr/bin/env python3
"""Compress evaluation benchmarks into <rec_dir>/<name>.rec/.idx/.manifest.json (docs/method.md §8).

    python tools/compress_valset.py [--config YAML] [--benchmark NAME ...] [--force] [--verify] [key=value ...]

Without --benchmark every entry of eval.benchmarks is compressed. Up-to-date files are left alone;
a compressed copy that no longer matches its protocol is refused unless --force rebuilds it.
--verify re-reads every record and checks the SHA-256 of the payloads against the manifest.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from qgface.config import load_config
from qgface.eval.benchmarks import BENCHMARK_NAMES, make_benchmark
from qgface.eval.compress import compress_benchmark, verify_data
from qgface.eval.run import eval_data_root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (eval.data_root, eval.rec_dir, ...)")
    parser.add_argument(
        "--benchmark",
        action="append",
        choices=BENCHMARK_NAMES,
        help="benchmark to compress (repeatable); default: eval.benchmarks",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even up-to-date or mismatching files")
    parser.add_argument("--verify", action="store_true", help="check every record against the manifest")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.data_root=/data/eval")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    data_root = eval_data_root(cfg)
    rec_dir = cfg.eval.rec_dir or data_root
    status = 0
    for name in args.benchmark or cfg.eval.benchmarks:
        start = time.perf_counter()
        try:
            bench = make_benchmark(
                name,
                data_root,
                tinyface_aligned_dir=cfg.eval.tinyface_aligned_dir,
                scface_aligned_dir=cfg.eval.scface_aligned_dir,
                ijb_protocol=cfg.eval.ijb_protocol,
            )
            rec = compress_benchmark(bench, rec_dir, num_workers=cfg.eval.num_workers, force=args.force)
        except Exception as exc:  # report every benchmark, then fail
            print(f"{name}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        size = rec.stat().st_size / 2**20
        line = f"{name}: {len(bench)} images, {size:.1f} MiB in {rec} ({time.perf_counter() - start:.1f} s)"
        if args.verify:
            ok = verify_data(bench, rec_dir)
            line += ", data verified" if ok else ", DATA DOES NOT MATCH THE MANIFEST"
            status = status or int(not ok)
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
