"""Evaluation (docs/method.md §7-8): benchmark protocols, compression into ``.rec``, flip-fused embedding,
metrics, one JSON per benchmark (``qgface.eval.run``) and their aggregation (``qgface.eval.aggregate``).

Entry points: ``python -m qgface.eval`` (one checkpoint, one benchmark) and ``python -m qgface.aggregate``
(:func:`qgface.eval.aggregate.main`).
"""
