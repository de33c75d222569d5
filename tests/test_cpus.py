"""CPUs for the loader: worker/prefetch defaults, the warning, the Slurm request (job and srun)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from qgface.cluster.submit import eval_cpus_per_task, slurm_parameters, train_cpus_per_task
from qgface.config import load_config
from qgface.data.cpus import resolve_num_workers, resolve_prefetch_factor, warn_if_few_cpus


@pytest.mark.parametrize(
    "workers,cpus,ranks,expected",
    [
        (3, 1, 8, 3),  # an explicit count is kept
        (-1, 40, 8, 4),  # 5 CPUs per rank: 1 trains, 4 load
        (-1, 2, 1, 1),
        (-1, 1, 1, 0),  # one CPU: load in the training process
        (-1, 8, 16, 0),
        (-1, 200, 1, 8),  # capped
    ],
)
def test_worker_count_from_the_cpus_of_each_rank(workers, cpus, ranks, expected):
    assert resolve_num_workers(workers, cpus, ranks) == expected


def test_prefetch_keeps_a_few_batches_in_flight():
    assert [resolve_prefetch_factor(0, w) for w in (1, 2, 3, 4, 8)] == [4, 2, 2, 2, 2]
    assert resolve_prefetch_factor(6, 1) == 6


def test_warning_when_the_cpus_are_far_fewer_than_the_loader_needs(caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_if_few_cpus(4, 1, 8) is True  # 8 x (1 + 4) = 40 needed
        assert "only 1 CPU(s) available to 8 training process(es)" in caplog.text
        assert "--cpus-per-task=40" in caplog.text
        caplog.clear()
        assert warn_if_few_cpus(4, 20, 8) is False  # half of what is needed: no warning
        assert caplog.text == ""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_loader_reads_the_process_affinity_and_warns_at_start():
    """A process pinned to one CPU, as a Slurm task without --cpus-per-task is, with 8 ranks on the node."""
    script = (
        "import logging, os\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from qgface.config import from_dict\n"
        "from qgface.data.loader import loader_workers\n"
        "print(loader_workers(from_dict({}).data), loader_workers(from_dict({'data': {'num_workers': 4}}).data))\n"
    )
    env = {**os.environ, "LOCAL_WORLD_SIZE": "8", "LOCAL_RANK": "0"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(0,", "None)", "(4,", "2)"]
    assert "only 1 CPU(s) available to 8 training process(es) with 4 loader worker(s)" in out.stderr


def test_cpus_per_task_derived_from_gpus_and_workers_and_given_to_srun(tmp_path):
    cfg = load_config(None, ["cluster.gpus_per_node=8"])
    assert train_cpus_per_task(cfg) == 40  # 8 trainers x (1 + 4 workers, the default -1's request)
    assert train_cpus_per_task(load_config(None, ["data.num_workers=2"])) == 3  # CPU training: one trainer
    assert train_cpus_per_task(load_config(None, ["cluster.cpus_per_task=16", "cluster.gpus_per_node=8"])) == 16
    assert eval_cpus_per_task(load_config(None, ["eval.num_workers=3"])) == 4
    params = slurm_parameters(cfg.cluster, 60, train_cpus_per_task(cfg))
    script = _make_sbatch_string(command="python -m x", folder=str(tmp_path), cpus_per_task=40, **params)
    assert "#SBATCH --cpus-per-task=40" in script
    srun = [line for line in script.splitlines() if line.startswith("srun")]
    assert len(srun) == 1 and "--cpus-per-task=40" in srun[0]
