"""Slurm/submitit glue (DESIGN.md floor 3): the job chain of a run and the callables the jobs run.

Only this package knows Slurm. ``launch.py`` calls ``preflight.check_launch`` (mistakes refused on the login node),
``prepare_run``, ``ensure_data`` (``run_dir``), then ``submit_chain`` (Slurm, and ``wait_for_chain`` with ``--wait``) or
``run_local_chain`` (this machine, ``follow`` showing its progress); ``jobs`` holds the picklable task objects.
"""

from qgface.cluster.jobs import AggregateTask, EvalTask, JobStepError, TrainTask
from qgface.cluster.run_dir import Run, ensure_data, prepare_run
from qgface.cluster.submit import (
    Chain,
    LocalRunInterrupted,
    SlurmUnavailableError,
    resolve_mode,
    run_local_chain,
    submit_chain,
)
from qgface.cluster.wait import wait_for_chain

__all__ = [
    "AggregateTask",
    "Chain",
    "EvalTask",
    "JobStepError",
    "LocalRunInterrupted",
    "Run",
    "SlurmUnavailableError",
    "TrainTask",
    "ensure_data",
    "prepare_run",
    "resolve_mode",
    "run_local_chain",
    "submit_chain",
    "wait_for_chain",
]
