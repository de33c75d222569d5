"""Training (docs/method.md §5): ``python -m qgface.train [CONFIG] [key=value ...]``, alone or under torchrun.

``main(argv) -> exit status`` runs one training process; ``REQUEUE_EXIT_CODE`` (75) is its status
after a stop signal (checkpoint saved, job to be requeued).
"""

from __future__ import annotations

from qgface.train.cli import main
from qgface.train.signals import REQUEUE_EXIT_CODE

__all__ = ["REQUEUE_EXIT_CODE", "main"]
