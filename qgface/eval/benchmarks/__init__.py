"""Benchmark registry (docs/method.md §7): one protocol object per benchmark name."""

from __future__ import annotations

from pathlib import Path

from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, EvalOutput
from qgface.eval.benchmarks.hq import CrossResolutionLFW, HQVerification
from qgface.eval.benchmarks.ijb import IJB, IJB_PROTOCOLS
from qgface.eval.benchmarks.ijb_1n import IJB1N
from qgface.eval.benchmarks.ijbs import IJBS
from qgface.eval.benchmarks.scface import SCface
from qgface.eval.benchmarks.tinyface import TinyFace

__all__ = ["BENCHMARK_NAMES", "IJB_PROTOCOLS", "Benchmark", "BenchmarkError", "EvalOutput", "make_benchmark"]

BENCHMARK_NAMES = ("hq", "crlfw", "tinyface", "scface", "ijbb", "ijbc", "ijbb_1n", "ijbc_1n", "ijbs")


def make_benchmark(name: str, data_root: str | Path, *, tinyface_aligned_dir: str = "aligned_pad_0.1_pad_high",
                   scface_aligned_dir: str = "scface/aligned", ijb_protocol: str = "qgface") -> Benchmark:
    """The protocol object of benchmark ``name`` over the evaluation data root (loads its protocol files)."""
    if name == "hq":
        return HQVerification(data_root)
    if name == "crlfw":
        return CrossResolutionLFW(data_root)
    if name == "tinyface":
        return TinyFace(data_root, tinyface_aligned_dir)
    if name == "scface":
        return SCface(data_root, scface_aligned_dir)
    if name in ("ijbb", "ijbc"):
        return IJB(data_root, name, ijb_protocol)
    if name in ("ijbb_1n", "ijbc_1n"):
        return IJB1N(data_root, name, ijb_protocol)
    if name == "ijbs":
        return IJBS(data_root)
    raise BenchmarkError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")
