"""Benchmark names and their registry (docs/method.md §7).

Adding a benchmark means one new module under ``qgface/eval/benchmarks/`` and one line in
``REGISTRY``: the config, ``launch.py --benchmarks``, ``python -m qgface.eval`` (and through it
``slurm/eval.sbatch``), the aggregation and the ablation all read the names from here.
"""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "hq": "qgface.eval.benchmarks.hq:HQVerification",
    "crlfw": "qgface.eval.benchmarks.hq:CrossResolutionLFW",
    "tinyface": "qgface.eval.benchmarks.tinyface:TinyFace",
    "scface": "qgface.eval.benchmarks.scface:SCface",
    "ijbb": "qgface.eval.benchmarks.ijb:IJB",
    "ijbc": "qgface.eval.benchmarks.ijb:IJB",
    "ijbb_1n": "qgface.eval.benchmarks.ijb_1n:IJB1N",
    "ijbc_1n": "qgface.eval.benchmarks.ijb_1n:IJB1N",
    "ijbs": "qgface.eval.benchmarks.ijbs:IJBS",
}
"""benchmark name -> ``module:class`` of its protocol object, in the order results are listed"""

BENCHMARK_NAMES: tuple[str, ...] = tuple(REGISTRY)

DEFAULT_BENCHMARKS: tuple[str, ...] = ("hq", "crlfw", "tinyface", "scface", "ijbb", "ijbc")
"""what ``eval.benchmarks`` (and so ``launch.py`` and ``slurm/eval.sbatch``) evaluates by default"""

VALIDATION_BENCHMARKS: tuple[str, ...] = ("hq", "crlfw")
"""benchmarks cheap enough to validate during training (eval.val_benchmarks): a few .bin files, seconds per call"""

HQ_SETS: tuple[str, ...] = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
"""the InsightFace ``.bin`` verification sets evaluated together as ``hq``, in their fixed order"""

TINYFACE_ALIGNED_DIR = "aligned_pad_0.1_pad_high"
"""the folder of TinyFace's aligned images as the QGFace reference distributes them"""

SCFACE_ALIGNED_DIR = "scface/aligned"
"""the folder of SCface's aligned probes and mugshots"""

IJB_PROTOCOLS: dict[str, str] = {"qgface": "lower", "insightface": "higher"}
"""IJB-B/C convention -> its TAR rule on tied scores (docs/method.md §7)"""
