"""DataLoader worker processes that start cleanly from any parent process.

Workers are spawned, not forked: a process forked from a parent whose OpenCV thread pool has run
inherits the pool's locks but not its threads, and its first parallel OpenCV call (even
``cv2.setNumThreads``) can wait forever. A spawned worker is a fresh interpreter; the cost is an
import of torch and one dataset pickle per worker, which persistent workers pay once per run. (A fork
server would be as clean, but its workers are not children of the training process, so they outlive it.)
"""

from __future__ import annotations

import signal
from typing import Any

import cv2
import torch

START_METHOD = "spawn"


# A worker that got SIGTERM keeps serving this long: enough for the training process to finish its
# step and save, bounded so that nothing waits forever on a worker that ignores termination.
SIGTERM_GRACE_S = 60


def worker_init(worker_id: int) -> None:
    """One thread per worker (the workers already run in parallel), and no death by the stop signals.

    Slurm signals every process of a job step. The training process answers SIGUSR1/SIGUSR2/SIGTERM
    by finishing its step and saving; a worker dying of the same signal would crash it first (the
    DataLoader raises when a worker is killed). So a worker ignores USR1/USR2 and outlives SIGTERM
    by ``SIGTERM_GRACE_S`` seconds unless the training process shuts it down earlier.
    """
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_after_grace)


def _end_after_grace(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.alarm(SIGTERM_GRACE_S)


def worker_options(num_workers: int, prefetch_factor: int | None = None) -> dict[str, Any]:
    """The DataLoader keyword arguments for ``num_workers`` worker processes (0 = load in-process),
    each preparing ``prefetch_factor`` batches ahead (DataLoader's default when None)."""
    if num_workers == 0:
        return {"num_workers": 0}
    options = {"num_workers": num_workers, "multiprocessing_context": START_METHOD, "worker_init_fn": worker_init}
    if prefetch_factor is not None:
        options["prefetch_factor"] = prefetch_factor
    return options
