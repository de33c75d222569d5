"""Benchmark protocol objects (docs/method.md §7); the names and their registry are :mod:`qgface.vocab.benchmarks`."""

from __future__ import annotations

import importlib
from pathlib import Path

from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, BenchmarkOptions, EvalOutput
from qgface.vocab.benchmarks import BENCHMARK_NAMES, IJB_PROTOCOLS, REGISTRY, SCFACE_ALIGNED_DIR, TINYFACE_ALIGNED_DIR

__all__ = [
    "BENCHMARK_NAMES",
    "IJB_PROTOCOLS",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkOptions",
    "EvalOutput",
    "benchmark_class",
    "make_benchmark",
]


def benchmark_class(name: str) -> type[Benchmark]:
    """The protocol class registered for benchmark ``name`` (imported on first use)."""
    if name not in REGISTRY:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_benchmark(
    name: str,
    data_root: str | Path,
    *,
    tinyface_aligned_dir: str = TINYFACE_ALIGNED_DIR,
    scface_aligned_dir: str = SCFACE_ALIGNED_DIR,
    ijb_protocol: str = "qgface",
) -> Benchmark:
    """The protocol object of benchmark ``name`` over the evaluation data root (loads its protocol files)."""
    options = BenchmarkOptions(tinyface_aligned_dir, scface_aligned_dir, ijb_protocol)
    return benchmark_class(name).from_options(name, data_root, options)
