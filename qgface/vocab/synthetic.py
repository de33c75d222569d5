"""Default size of the synthetic mixed-quality dataset (``data.synthetic_*``, ``tools/make_synthetic.py``,
``tools/ablation.py`` and :func:`qgface.data.synthetic.generate` all start from these)."""

from __future__ import annotations

IDENTITIES = 300
"""training identities"""
IMAGES_PER_IDENTITY = 20
"""images per training identity"""
EVAL_IDENTITIES = 100
"""identities in each evaluation set (disjoint from the training ones)"""
