"""launch.py without Slurm: flags -> config, the run directory, torchrun command lines, and the whole
chain (synthetic data -> torchrun training -> evaluation -> aggregation) through submitit's local executor."""

from __future__ import annotations

import csv
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from qgface.cluster import SlurmUnavailableError, jobs, prepare_run, resolve_mode, slurm_env
from qgface.config import load_config

from paper_columns import RESULTS_HEADER

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch.py"
# the synthetic-data cache shared with the demo (`python launch.py` writes logs/synthetic): generated once
SYNTHETIC_DIR = Path(os.environ.get("QGFACE_TEST_SYNTHETIC_DIR", REPO / "logs" / "synthetic"))
# the tiny profile cut to a few optimiser steps: the tests check the plumbing, not the accuracy
FEW_STEPS = [
    "train.steps_per_epoch=3",
    "optim.epochs=2",
    "optim.milestones=[1]",
    "train.checkpoint_every=1",
    "train.log_every=1",
    "data.num_workers=0",
    "eval.num_workers=0",
    f"data.synthetic_dir={SYNTHETIC_DIR}",
]


def _launch_module():
    spec = importlib.util.spec_from_file_location("qgface_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_launch(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(LAUNCH), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_dir_of(output: str) -> Path:
    line = next(x for x in output.splitlines() if x.startswith("run directory: "))
    return Path(line.removeprefix("run directory: "))


def test_flags_become_config_overrides():
    launch = _launch_module()
    ns = launch.build_parser().parse_args(
        [
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--partition",
            "gpu",
            "--time",
            "30",
            "--account",
            "proj",
            "--qos",
            "high",
            "--constraint",
            "a100",
            "--cpus-per-task",
            "8",
            "--mem",
            "64G",
            "--name",
            "exp1",
            "--benchmarks",
            "hq",
            "tinyface",
            "--",
            str(REPO / "configs" / "qgface.yaml"),
            "optim.lr=0.05",
        ]
    )
    config, overrides = launch.config_from_args(ns)
    cfg = load_config(config, overrides)
    c = cfg.cluster
    assert (c.nodes, c.gpus_per_node, c.partition, c.time_min) == (2, 4, "gpu", 30)
    assert (c.account, c.qos, c.constraint, c.cpus_per_task, c.mem) == ("proj", "high", "a100", 8, "64G")
    assert cfg.name == "exp1" and cfg.eval.benchmarks == ["hq", "tinyface"] and cfg.optim.lr == 0.05


def test_flags_win_over_key_value_and_default_config_is_tiny():
    launch = _launch_module()
    config, overrides = launch.config_from_args(launch.build_parser().parse_args(["cluster.nodes=3", "--nodes", "2"]))
    assert config == REPO / "configs" / "tiny.yaml" and config.is_file()
    assert load_config(config, overrides).cluster.nodes == 2


def test_auto_mode_is_local_without_sbatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_mode("auto") == "local"
    assert resolve_mode("local") == "local"
    with pytest.raises(SlurmUnavailableError, match="sbatch is not on PATH"):
        resolve_mode("slurm")
    with pytest.raises(ValueError, match="auto, slurm or local"):
        resolve_mode("kubernetes")


@pytest.mark.skipif(shutil.which("sinfo") is None, reason="needs the Slurm client (sinfo) installed")
def test_auto_mode_is_local_when_no_controller_answers(tmp_path, monkeypatch):
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=down\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n"
        "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=localhost\n"
    )
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert resolve_mode("auto") == "local"


def test_run_directory_is_timestamped_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["output_root=out", "name=demo", "data.root=train"])
    now = datetime.datetime(2024, 1, 2, 3, 4, 5)
    first, second = prepare_run(cfg, now), prepare_run(cfg, now)
    assert first.run_dir == tmp_path / "out" / "demo-20240102-030405"
    assert second.run_dir == tmp_path / "out" / "demo-20240102-030405-1"
    for sub in ("slurm", "checkpoints", "tb", "eval"):
        assert (first.run_dir / sub).is_dir()
    saved = load_config(first.config_path)
    assert saved.run_dir == str(first.run_dir) and saved.resolved_run_dir() == first.run_dir
    assert saved.data.root == str(tmp_path / "train") and saved.data.synthetic_dir == str(tmp_path / "logs/synthetic")


def test_torchrun_command_lines():
    node = slurm_env.NodeTask(job_id="123456", nodes=("node1", "node2"), node_rank=1)
    assert node.rdzv_endpoint == "node1:23456" and slurm_env.rendezvous_port("7_3") == 20007
    cmd = jobs.torchrun_command("/runs/a/config.yaml", nproc=0, max_restarts=3, node=node)
    flags = dict(zip(cmd[3:-3:2], cmd[4:-3:2]))
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and cmd[-3:] == [
        "-m",
        "qgface.train",
        "/runs/a/config.yaml",
    ]
    assert flags["--nnodes"] == "2" and flags["--node_rank"] == "1" and flags["--nproc_per_node"] == "1"
    assert flags["--rdzv_backend"] == "c10d" and flags["--rdzv_endpoint"] == "node1:23456"
    assert flags["--max_restarts"] == "3"
    local = jobs.torchrun_command("c.yaml", nproc=4, max_restarts=0, node=None)
    assert "--standalone" in local and local[local.index("--nproc_per_node") + 1] == "4"


def test_an_empty_data_root_is_refused_before_a_run_directory_exists(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_launch(
        "--cluster",
        "local",
        "--no-eval",
        *FEW_STEPS,
        f"output_root={tmp_path / 'logs'}",
        f"data.root={tmp_path / 'empty'}",
        "train.max_restarts=0",
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: data.root={tmp_path / 'empty'}: " in done.stderr and "run directory" not in done.stdout
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())


@pytest.mark.slow
def test_local_chain_trains_evaluates_and_aggregates(tmp_path):
    done = run_launch(
        "--cluster",
        "local",
        "--benchmarks",
        "tinyface",
        "--",
        *FEW_STEPS,
        f"output_root={tmp_path / 'logs'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = run_dir_of(done.stdout)
    assert run_dir.parent == tmp_path / "logs" and run_dir.name.startswith("tiny-")
    assert f"tensorboard --logdir {tmp_path / 'logs'}/" in done.stdout
    for line in ("train job: ", "eval tinyface job: ", "aggregate job: "):
        assert line in done.stdout
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert ckpt["finished"] and ckpt["step"] == 6
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_dir"] == str(run_dir)
    assert (run_dir / "eval" / "last" / "tinyface.json").is_file()
    with open(run_dir / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[: len(RESULTS_HEADER)] == RESULTS_HEADER and len(rows) == 1
    assert 0.0 <= float(rows[0]["tinyface_rank1"]) <= 100.0 and rows[0]["step"] == "6"
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    # what the user sees: progress while training, then the headline table and where everything is
    assert " step 6/6 (100%) epoch 1 loss " in done.stdout and " ETA " in done.stdout
    assert "| checkpoint | step | scface_d1 |" in done.stdout and "| last.pt | 6 |" in done.stdout
    assert f"  results        {run_dir}/results.csv" in done.stdout
    ids = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    assert ids["mode"] == "local" and ids["train"] and len(ids["eval_tasks"]) == 1 and ids["aggregate"]
