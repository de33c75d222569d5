"""pytest plugin: ``slurm_cluster``, a real 2-node Slurm 22.05 cluster on this machine for the session.

Started with the shared recipe (``slurm-test-cluster/start-cluster.sh loopback2``: nodes ``node1`` and
``node2`` on loopback addresses, partition ``gpu``), which apt-installs slurmctld/slurmd/munge when
they are missing, and stopped at the end of the session (unless it was already running before).

Where the recipe lives: ``$QGFACE_SLURM_CLUSTER_DIR``, default ``<repo>/../shared/slurm-test-cluster``.
When the cluster cannot be started (not root, no apt, no cgroup mount, ...) the tests that use the
fixture are skipped with the reason, unless ``QGFACE_REQUIRE_SLURM=1`` (CI), which makes it an error.
``SLURM_CI_ACCOUNTING=1`` also starts MariaDB + slurmdbd (sacct); these tests do not need it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 900  # a first start apt-installs the packages


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to know about the running cluster."""

    partition: str
    nodes: tuple[str, ...]
    script_dir: Path
    start_seconds: float


def cluster_dir() -> Path:
    return Path(os.environ.get("QGFACE_SLURM_CLUSTER_DIR", REPO.parent / "shared" / "slurm-test-cluster"))


def _unavailable(reason: str) -> None:
    if os.environ.get("QGFACE_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm test cluster required (QGFACE_REQUIRE_SLURM=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"Slurm test cluster unavailable: {reason}")


def _why_not_startable(script_dir: Path) -> str | None:
    if not (script_dir / "start-cluster.sh").is_file():
        return f"{script_dir}/start-cluster.sh not found (set QGFACE_SLURM_CLUSTER_DIR)"
    if os.geteuid() != 0:
        return "start-cluster.sh needs root"
    sbin_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if not shutil.which("slurmctld", path=sbin_path) and not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    return None


def _run_dir() -> Path:
    return Path(os.environ.get("SLURM_CI_RUN_DIR", "/run/slurm-ci"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    script_dir = cluster_dir()
    reason = _why_not_startable(script_dir)
    if reason:
        _unavailable(reason)
    if os.environ.get("SLURM_CI_CONF_DIR"):
        os.environ["SLURM_CONF"] = f"{os.environ['SLURM_CI_CONF_DIR']}/slurm.conf"
    partition = os.environ.get("SLURM_CI_PARTITION", "gpu")
    was_running = (_run_dir() / "settings").is_file()
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            [str(script_dir / "start-cluster.sh"), "loopback2"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            env={**os.environ, "SLURM_CI_PARTITION": partition},
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"start-cluster.sh loopback2 did not finish in {START_TIMEOUT_S} s")
    if done.returncode != 0:
        subprocess.run([str(script_dir / "stop-cluster.sh")], capture_output=True, timeout=120)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        _unavailable(f"start-cluster.sh loopback2 failed (exit {done.returncode}):\n{tail}")
    seconds = time.monotonic() - t0
    sinfo = ["sinfo", "-h", "-N", "-p", partition, "-o", "%N"]
    nodes = subprocess.run(sinfo, capture_output=True, text=True, check=True)
    cluster = SlurmCluster(partition, tuple(sorted(set(nodes.stdout.split()))), script_dir, seconds)
    print(f"\nslurm_cluster: nodes {','.join(cluster.nodes)}, partition {partition}, up in {seconds:.1f} s")
    yield cluster
    if not was_running:
        subprocess.run([str(script_dir / "stop-cluster.sh")], capture_output=True, timeout=300)
