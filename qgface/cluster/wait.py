"""Follow a submitted chain to its end (``launch.py --wait``), so scripts can block on a Slurm run.

The chain's last job (aggregation, or training with ``--no-eval``) decides: the run succeeded when
that job left the queue with a successful submitit result. The queue is read with ``squeue --me``
rather than through submitit's ``job.state``, which needs Slurm accounting (``sacct``): without it
the state of a job that ended stays ``UNKNOWN``. Requeued training stays in the queue, so a
preempted run is followed across its restarts.
"""

from __future__ import annotations

import logging
import time

import submitit

from qgface.cluster import slurm_env
from qgface.cluster.submit import Chain, Report, report_outcome

log = logging.getLogger(__name__)

POLL_S = 15.0
"""seconds between two looks at the queue"""


def wait_for_chain(chain: Chain, report: Report = log.info, poll_s: float = POLL_S) -> bool:
    """Block until the chain's last job has left the queue; True when it ended with a result, not an error."""
    last = chain.aggregate or chain.train
    what = "aggregation" if chain.aggregate is not None else "training"
    report(f"waiting for {what} job {last.job_id} to end (polling the queue every {poll_s:.0f} s)")
    while _in_queue(last.job_id):
        time.sleep(poll_s)
    return _succeeded(last, what, report)


def _in_queue(job_id: str) -> bool:
    """Whether the job is pending, running or requeued; a failing ``squeue`` (busy controller) counts as yes."""
    try:
        listed = slurm_env.run_slurm("squeue", "--me", "--noheader", "--format=%i", timeout_s=60).split()
    except slurm_env.SlurmCommandError as err:
        log.warning("cannot read the queue (%s); trying again", err)
        return True
    return job_id in listed


def _succeeded(job: submitit.Job, what: str, report: Report) -> bool:
    # submitit writes the result pickle when the callable returns or raises; a job killed by Slurm
    # (cancelled, out of time, node failure) leaves none, and waiting for its result would never end
    if not job.paths.result_pickle.exists():
        report(f"{what} job {job.job_id} ended without a result (cancelled or killed); see {job.paths.stderr}")
        return False
    return report_outcome(job, f"{what} job {job.job_id}", report)
