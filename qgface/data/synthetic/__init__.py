"""The synthetic mixed-quality dataset: every benchmark layout of docs/method.md §7, generated from procedural faces.

Stands in for MS1MV2 and the evaluation sets when ``data.root`` / ``eval.data_root`` are empty, for the
demo, the tests and the ablation. From the bottom up:

- ``faces``: an identity (a fixed random face) and its canonical drawing;
- ``camera``: an image of it under a random variation (pose, light, noise), aligned or loose,
  and the surveillance-like degradation;
- ``shots``: one image per key ``(kind, identity, stream, index, options)``, seeded by that key
  alone, so any subset regenerates identically; rendered in spawned processes;
- ``layouts``: the on-disk layouts of TinyFace, SCface and IJB-B/C;
- ``dataset``: what each benchmark needs, :func:`generate` (:func:`generate_training_set`: with the
  smallest evaluation sets) and the cache :func:`ensure_synthetic`.
"""

from qgface.data.synthetic.dataset import (
    GENERATOR_VERSION,
    HQ_SETS,
    ensure_synthetic,
    generate,
    generate_training_set,
    synthetic_name,
)
from qgface.data.synthetic.shots import render_shot

__all__ = [
    "GENERATOR_VERSION",
    "HQ_SETS",
    "ensure_synthetic",
    "generate",
    "generate_training_set",
    "render_shot",
    "synthetic_name",
]
