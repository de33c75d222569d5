"""How many CPUs the loader has and needs: worker and prefetch defaults, the Slurm request, a warning.

A rank runs one training process and ``data.num_workers`` loader processes, so a node with ``R``
ranks keeps ``R x (1 + workers)`` CPUs busy. Slurm gives a task one CPU unless asked, and the
ranks then share it; :func:`warn_if_few_cpus` says so at start. No torch or OpenCV import here:
the launcher uses this module to size its Slurm request (``qgface.cluster.submit``).
"""

from __future__ import annotations

import logging
import math
import os

__all__ = [
    "BATCHES_IN_FLIGHT",
    "MAX_AUTO_WORKERS",
    "REQUEST_WORKERS",
    "available_cpus",
    "cpus_needed",
    "ranks_on_this_node",
    "resolve_num_workers",
    "resolve_prefetch_factor",
    "warn_if_few_cpus",
]

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8
"""the most loader workers per rank ``data.num_workers=-1`` picks (more rarely helps one GPU)"""
REQUEST_WORKERS = 4
"""loader workers per rank assumed when CPUs are requested from Slurm for ``data.num_workers=-1``"""
BATCHES_IN_FLIGHT = 4
"""``data.prefetch_factor=0`` keeps at least this many batches prepared per rank (at least 2 per worker)"""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask under Slurm/cgroups), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def ranks_on_this_node() -> int:
    """Training processes sharing this node's CPUs: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cpus_needed(num_workers: int, ranks: int) -> int:
    """CPUs ``ranks`` training processes with ``num_workers`` loader workers each keep busy."""
    return ranks * (1 + num_workers)


def resolve_num_workers(num_workers: int, cpus: int, ranks: int) -> int:
    """``num_workers``, or for -1 the CPUs of each rank's share left after its training process."""
    if num_workers >= 0:
        return num_workers
    return max(0, min(MAX_AUTO_WORKERS, cpus // ranks - 1))


def resolve_prefetch_factor(prefetch_factor: int, num_workers: int) -> int:
    """``prefetch_factor``, or for 0 the batches per worker that keep ``BATCHES_IN_FLIGHT`` in flight."""
    if prefetch_factor > 0:
        return prefetch_factor
    return max(2, math.ceil(BATCHES_IN_FLIGHT / max(1, num_workers)))


def warn_if_few_cpus(num_workers: int, cpus: int, ranks: int) -> bool:
    """Log a warning (True) when this node's processes may use under half the CPUs the loader needs."""
    needed = cpus_needed(num_workers, ranks)
    if 2 * cpus >= needed:
        return False
    log.warning(
        "only %d CPU(s) available to %d training process(es) with %d loader worker(s) each, which need "
        "%d: the loader will starve the GPUs. Give the job more CPUs (cluster.cpus_per_task=0 derives "
        "them; with sbatch pass --cpus-per-task=%d) or lower data.num_workers",
        cpus,
        ranks,
        num_workers,
        needed,
        needed,
    )
    return True
