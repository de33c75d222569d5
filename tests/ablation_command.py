"""The ``tools/ablation.py`` command of the tests: two settings, one seed, the smallest budget that
still trains and evaluates (shared by the local and the Slurm test)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def minimal_ablation_command(study: Path, out: Path, *options: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """Baseline and QGFace (D), seed 0, 1 epoch of 2 steps of 8 images, 20 identities of 4 images,
    12 evaluation identities, a queue of 64; ``options`` are more flags, ``overrides`` config keys."""
    return [
        sys.executable,
        str(REPO / "tools" / "ablation.py"),
        *options,
        "--settings",
        "baseline",
        "qgface",
        "--seeds",
        "0",
        "--study-dir",
        str(study),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--identities",
        "20",
        "--images-per-identity",
        "4",
        "--eval-identities",
        "12",
        "--queue-size",
        "64",
        "data.num_workers=0",
        "eval.num_workers=0",
        *overrides,
    ]
