"""Where a task of a Slurm job sits: its node list, node rank and the torchrun rendezvous address.

Everything here is read from the ``SLURM_*`` variables Slurm sets in every task, and host lists are
expanded/compressed by ``scontrol`` itself (the ``node[01-04,07]`` syntax has corner cases that
Slurm's own parser gets right). Only ``qgface.cluster`` uses this module (DESIGN.md: only cluster/
knows Slurm).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

RDZV_PORT_BASE = 20000
"""rendezvous ports are RDZV_PORT_BASE + job_id % RDZV_PORT_SPAN: two jobs sharing a node rarely collide"""
RDZV_PORT_SPAN = 20000


class SlurmCommandError(RuntimeError):
    """A Slurm client command (scontrol, sinfo) failed; the message holds its command line and stderr."""


def run_slurm(*args: str, timeout_s: float = 60) -> str:
    """Run a Slurm client command and return its stdout; raise SlurmCommandError on failure."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SlurmCommandError(f"`{' '.join(args)}` could not run: {err}") from None
    if done.returncode != 0:
        raise SlurmCommandError(f"`{' '.join(args)}` failed with exit code {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def expand_hostlist(hostlist: str) -> list[str]:
    """``node[1-2],gpu7`` -> ``['node1', 'node2', 'gpu7']`` (``scontrol show hostnames``)."""
    if not hostlist.strip():
        return []
    return run_slurm("scontrol", "show", "hostnames", hostlist).split()


def compress_hostlist(hosts: Sequence[str]) -> str:
    """``['node1', 'node2']`` -> ``node[1-2]`` (``scontrol show hostlist``); empty for no hosts."""
    if not hosts:
        return ""
    return run_slurm("scontrol", "show", "hostlist", ",".join(hosts)).strip()


def array_id(job_id: str) -> str:
    """The array's own id of an array task id (``1042_3`` -> ``1042``); a plain job id unchanged."""
    return job_id.split("_")[0]


def rendezvous_port(job_id: int | str) -> int:
    """The c10d rendezvous port of a training job: the same on every node and after every requeue."""
    return RDZV_PORT_BASE + int(array_id(str(job_id))) % RDZV_PORT_SPAN


@dataclass(frozen=True)
class NodeTask:
    """One Slurm task of a one-task-per-node job (DESIGN.md: torchrun per node)."""

    job_id: str
    nodes: tuple[str, ...]
    """every node of the allocation, in Slurm's order"""
    node_rank: int
    """SLURM_NODEID: index of this task's node in ``nodes``"""

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def rdzv_endpoint(self) -> str:
        """``<first node>:<port from the job id>``: the first node hosts torchrun's c10d store.

        A host name, not an address: torchrun decides which agent hosts the store by comparing the
        endpoint with its own host name, and a loopback address would match on every node.
        """
        return f"{self.nodes[0]}:{rendezvous_port(self.job_id)}"


def current_node_task(env: Mapping[str, str] | None = None) -> NodeTask:
    """The NodeTask of the calling process, from ``SLURM_JOB_ID``, ``SLURM_JOB_NODELIST``, ``SLURM_NODEID``."""
    env = os.environ if env is None else env
    missing = [k for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODEID") if k not in env]
    if missing:
        raise SlurmCommandError(f"not inside a Slurm task: {', '.join(missing)} not set")
    nodes = tuple(expand_hostlist(env["SLURM_JOB_NODELIST"]))
    return NodeTask(job_id=env["SLURM_JOB_ID"], nodes=nodes, node_rank=int(env["SLURM_NODEID"]))


def cluster_nodes(partition: str = "") -> list[str]:
    """Every node of ``partition`` (all partitions when empty), as ``sinfo`` lists them."""
    args = ["sinfo", "-h", "-N", "-o", "%N"] + (["-p", partition] if partition else [])
    return sorted(set(run_slurm(*args).split()))


def restrict_to_nodes(job_id: str, nodes: Sequence[str], partition: str = "") -> None:
    """Make the pending job (or every pending task of the array) ``job_id`` run only on ``nodes``.

    Implemented with ``ExcNodeList`` = every other node of the partition: ``NodeList=`` would require
    a one-node task to hold *all* the listed nodes at once.
    """
    others = [n for n in cluster_nodes(partition) if n not in set(nodes)]
    run_slurm("scontrol", "update", f"JobId={job_id}", f"ExcNodeList={compress_hostlist(others)}")
    log.info("job %s restricted to nodes %s (excluded: %s)", job_id, ",".join(nodes), ",".join(others) or "none")
