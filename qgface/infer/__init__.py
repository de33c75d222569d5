"""Using a trained model on photos: align folders, embed, verify, search (docs/method.md §9).

Floor 2 beside ``eval/``: may import ``models/``, ``data/``, ``detect/`` and ``eval``'s embedding and
alignment; never ``train/`` or ``cluster/``.
"""
