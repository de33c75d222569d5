"""The job chain on a real 2-node Slurm cluster (fixture ``slurm_cluster``, tests/slurm_cluster.py).

Every run is the tiny profile cut to a few optimiser steps (CPU, gloo). The jobs run this checkout's
code (PYTHONPATH) with the test's Python, exactly as launch.py and slurm/*.sbatch submit them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qgface.config import load_config
from qgface.data.synthetic import ensure_synthetic

from ablation_command import minimal_ablation_command
from paper_columns import RESULTS_HEADER

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_DIR = Path(os.environ.get("QGFACE_TEST_SYNTHETIC_DIR", REPO / "logs" / "synthetic"))
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
BENCHMARKS = ["tinyface", "ijbb"]  # the two smallest synthetic benchmarks
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable}


# ------------------------------------------------------------------------------------------------ helpers


def launch(*args: str, cwd: Path) -> tuple[Path, dict]:
    """Run launch.py (it returns once the chain is submitted); returns the run directory and its slurm/jobs.json."""
    run_dir, ids, _ = launch_and_wait(*args, cwd=cwd, expect_exit=0, wait=False)
    return run_dir, ids


def launch_and_wait(*args: str, cwd: Path, expect_exit: int, wait: bool = True) -> tuple[Path, dict, str]:
    """``launch.py --wait``: returns when the chain has ended; its exit code says whether the chain succeeded."""
    command = [sys.executable, str(REPO / "launch.py"), *(["--wait"] if wait else []), *args]
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == expect_exit, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("run directory: "))
    run_dir = Path(line.removeprefix("run directory: "))
    return run_dir, json.loads((run_dir / "slurm" / "jobs.json").read_text()), done.stdout


def records(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job -o``: one dict per job (per array task) of Key=Value fields."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, check=True)
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.stdout.splitlines() if line]


def wait_ended(job_id: str, timeout_s: float) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        recs = records(job_id)
        if recs and all(r["JobState"] in ENDED for r in recs):
            return recs
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not ended after {timeout_s} s: {[r['JobState'] for r in recs]}")
        time.sleep(1)


def hostnames(nodelist: str) -> set[str]:
    return set(
        subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout.split()
    )


def task_results(run_dir: Path, job_id: str) -> list:
    """The values the job's tasks returned (submitit result pickles), task 0 first."""
    out = []
    for path in sorted((run_dir / "slurm").glob(f"{job_id}_*_result.pkl")):
        status, value = submitit.core.utils.pickle_load(path)
        assert status == "success", value
        out.append(value)
    return out


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")


def wait_step(run_dir: Path, step: int, timeout_s: float = 300) -> None:
    """Until last.pt holds at least ``step`` optimiser steps (it is replaced atomically)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (run_dir / "checkpoints" / "last.pt").exists() and checkpoint(run_dir)["step"] >= step:
            assert not checkpoint(run_dir)["finished"], "training finished before the test could interrupt it"
            return
        time.sleep(0.3)
    raise TimeoutError(f"{run_dir}: no checkpoint of step {step} after {timeout_s} s")


def logs(run_dir: Path, job_id: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "slurm").glob(f"{job_id}_*_log.*")))


def processes(*needles: str, without: str = "torch.distributed.run") -> list[int]:
    """Pids whose command line contains every needle (and not ``without``: torchrun's has them too)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and all(n in cmdline for n in needles) and without not in cmdline:
            pids.append(int(entry))
    return pids


def same_weights(a: dict, b: dict) -> bool:
    return a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ------------------------------------------------------------------------------------- the whole chain


@pytest.fixture(scope="module")
def chain_run(slurm_cluster, tmp_path_factory):
    """``launch.py --nodes 2``: training on both nodes -> 2 evaluation tasks -> aggregation."""
    out = tmp_path_factory.mktemp("chain")
    t0 = time.monotonic()
    run_dir, ids, stdout = launch_and_wait(
        "--nodes",
        "2",
        "--partition",
        slurm_cluster.partition,
        "--benchmarks",
        *BENCHMARKS,
        "--",
        *FEW_STEPS,
        f"output_root={out}",
        cwd=REPO,
        expect_exit=0,
    )
    print(f"\nchain (launch -> aggregation ended): {time.monotonic() - t0:.0f} s")
    (agg,) = records(ids["aggregate"])
    assert agg["JobState"] == "COMPLETED", "launch.py --wait returned before the aggregation job had ended"
    assert f"aggregation job {ids['aggregate']} done" in stdout and f"finished: {run_dir}/results.csv" in stdout
    return run_dir, ids


def test_training_ran_on_both_nodes(chain_run):
    run_dir, ids = chain_run
    (train,) = records(ids["train"])
    assert train["JobState"] == "COMPLETED" and hostnames(train["NodeList"]) == {"node1", "node2"}
    results = task_results(run_dir, ids["train"])
    assert [(r["node_rank"], r["torchrun_exit"]) for r in results] == [(0, 0), (1, 0)]
    assert {r["hostname"] for r in results} == {"node1", "node2"}
    ckpt = checkpoint(run_dir)
    assert ckpt["finished"] and ckpt["step"] == 6
    assert len(ckpt["rng"]) == 2, "one RNG state per rank: the workers of both nodes trained together"


def test_eval_array_ran_after_training_on_its_nodes(chain_run):
    run_dir, ids = chain_run
    (train,) = records(ids["train"])
    tasks = records(ids["eval_array"])
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"]
    assert all(t["JobState"] == "COMPLETED" for t in tasks), [t["JobState"] for t in tasks]
    train_nodes = hostnames(train["NodeList"])
    for task in tasks:
        assert hostnames(task["NodeList"]) <= train_nodes
        assert task["StartTime"] >= train["EndTime"], "afterok: evaluation starts once training has ended"
    assert sorted(r["benchmark"] for r in task_results(run_dir, ids["eval_array"])) == sorted(BENCHMARKS)
    for name in BENCHMARKS:
        assert json.loads((run_dir / "eval" / "last" / f"{name}.json").read_text())["status"] == "ok"


def test_aggregation_wrote_results_csv_and_tensorboard(chain_run):
    run_dir, ids = chain_run
    (agg,) = records(ids["aggregate"])
    assert agg["JobState"] == "COMPLETED"
    with open(run_dir / "results.csv") as f:
        reader = csv.DictReader(f)
        (row,) = list(reader)
    assert reader.fieldnames[: len(RESULTS_HEADER)] == RESULTS_HEADER
    assert row["step"] == "6" and row["checkpoint"].endswith("last.pt")
    assert 0.0 <= float(row["tinyface_rank1"]) <= 100.0 and 0.0 <= float(row["ijbb_tar_at_1e-4"]) <= 100.0
    assert row["all_avg"] == "", "all_avg needs all six paper columns"
    acc = EventAccumulator(str(run_dir / "tb")).Reload()
    tags = acc.Tags()["scalars"]
    assert any(t.startswith("eval/tinyface/") for t in tags) and any(t.startswith("eval/ijbb/") for t in tags), tags
    assert [e.step for e in acc.Scalars(next(t for t in tags if t.startswith("eval/tinyface/")))] == [6]


def test_failed_array_task_is_reported_by_aggregation(chain_run, tmp_path, slurm_cluster):
    """IJB-B's data is missing: its task fails, TinyFace's completes, aggregation fails naming IJB-B."""
    trained, _ = chain_run
    run_dir = tmp_path / "partial"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")  # finished: no training
    data = ensure_synthetic(load_config(REPO / "configs" / "tiny.yaml", FEW_STEPS))  # made by chain_run
    partial = tmp_path / "evaldata"
    partial.mkdir()
    for name in ("tinyface", "aligned_pad_0.1_pad_high"):  # TinyFace's protocol and aligned images
        (partial / name).symlink_to(data / name)
    for name in ("meta", "loose_crop"):  # IJB-B's folders pass the login-node check but hold no protocol
        (partial / "IJBB" / name).mkdir(parents=True)
    _, ids = launch(
        "--partition",
        slurm_cluster.partition,
        "--benchmarks",
        *BENCHMARKS,
        "--",
        *FEW_STEPS,
        f"run_dir={run_dir}",
        f"eval.data_root={partial}",
        cwd=REPO,
    )
    (agg,) = wait_ended(ids["aggregate"], 300)
    states = {t["ArrayTaskId"]: t["JobState"] for t in records(ids["eval_array"])}
    assert states == {"0": "COMPLETED", "1": "FAILED"}
    assert agg["JobState"] == "FAILED"
    assert "ijbb" in logs(run_dir, ids["aggregate"])
    with open(run_dir / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["ijbb_tar_at_1e-4"] == "" and 0.0 <= float(row["tinyface_rank1"]) <= 100.0


def test_failed_training_cancels_evaluation_and_aggregation_reports_it(slurm_cluster, tmp_path):
    """A non-finite loss fails the training job at once (not retried): the array never runs, aggregation
    names every gap."""
    run_dir, ids, stdout = launch_and_wait(
        "--partition",
        slurm_cluster.partition,
        "--benchmarks",
        *BENCHMARKS,
        "--",
        *FEW_STEPS,
        f"output_root={tmp_path}",
        "optim.lr=1e30",
        "train.max_restarts=2",
        cwd=REPO,
        expect_exit=1,
    )
    assert f"aggregation job {ids['aggregate']} failed" in stdout and f"FAILED: {run_dir}/results.csv" in stdout
    (agg,) = wait_ended(ids["aggregate"], 60)
    assert records(ids["train"])[0]["JobState"] == "FAILED"
    assert "training failed (not retried: it would fail again): NonFiniteLossError" in logs(run_dir, ids["train"])
    assert {t["JobState"] for t in records(ids["eval_array"])} == {"CANCELLED"}
    assert agg["JobState"] == "FAILED"
    text = logs(run_dir, ids["aggregate"])
    assert all(name in text for name in BENCHMARKS)
    assert not list((run_dir / "eval").rglob("*.json"))


# ---------------------------------------------------------------------- preemption and a killed worker


@pytest.fixture(scope="module")
def resume_runs(slurm_cluster, tmp_path_factory):
    """Three identical 1-node trainings at once: one undisturbed, one preempted, one with a worker killed."""
    out = tmp_path_factory.mktemp("resume")
    args = [
        "--partition",
        slurm_cluster.partition,
        "--no-eval",
        "--",
        *FEW_STEPS,
        "train.steps_per_epoch=4",
        f"output_root={out}",
    ]
    runs = {name: launch("--name", name, *args, cwd=REPO) for name in ("reference", "preempted", "killed")}
    t0 = time.monotonic()
    pre_dir, pre_ids = runs["preempted"]
    wait_step(pre_dir, 2)
    submitit.SlurmJob(folder=pre_dir / "slurm", job_id=pre_ids["train"])._interrupt()  # SIGTERM + USR2
    kill_dir, _ = runs["killed"]
    wait_step(kill_dir, 2)
    (worker,) = processes("-m qgface.train", str(kill_dir / "config.yaml"))
    os.kill(worker, signal.SIGKILL)
    ended = {name: wait_ended(ids["train"], 420)[0] for name, (_, ids) in runs.items()}
    print(f"\npreempt/kill runs: {time.monotonic() - t0:.0f} s after launch")
    return runs, ended


def test_preempted_training_requeues_and_resumes_exactly(resume_runs):
    runs, ended = resume_runs
    assert ended["preempted"]["JobState"] == "COMPLETED" and ended["preempted"]["Restarts"] == "1"
    assert ended["reference"]["Restarts"] == "0"
    run_dir, ids = runs["preempted"]
    text = logs(run_dir, ids["train"])
    assert "Calling checkpoint method" in text and "resumed from" in text
    final, reference = checkpoint(run_dir), checkpoint(runs["reference"][0])
    assert final["finished"] and final["step"] == reference["step"] == 8
    assert same_weights(final, reference), "resumed training must end with the uninterrupted run's weights"


def test_killed_worker_is_restarted_by_torchrun(resume_runs):
    runs, ended = resume_runs
    assert ended["killed"]["JobState"] == "COMPLETED" and ended["killed"]["Restarts"] == "0"
    run_dir, ids = runs["killed"]
    assert "resumed from" in logs(run_dir, ids["train"])
    final = checkpoint(run_dir)
    assert final["finished"] and final["step"] == 8
    assert same_weights(final, checkpoint(runs["reference"][0]))


def test_two_node_training_preempted_requeues_on_two_nodes_and_resumes_exactly(chain_run, slurm_cluster, tmp_path):
    """The chain's 2-node training again, preempted after step 2: requeued, and the chain's final weights."""
    trained, _ = chain_run
    run_dir, ids = launch(
        "--nodes",
        "2",
        "--partition",
        slurm_cluster.partition,
        "--no-eval",
        "--",
        *FEW_STEPS,
        f"output_root={tmp_path}",
        cwd=REPO,
    )
    wait_step(run_dir, 2)
    submitit.SlurmJob(folder=run_dir / "slurm", job_id=ids["train"])._interrupt()  # USR2 to the tasks of both nodes
    (ended,) = wait_ended(ids["train"], 420)
    assert ended["JobState"] == "COMPLETED" and ended["Restarts"] == "1"
    assert hostnames(ended["NodeList"]) == {"node1", "node2"}
    assert "resumed from" in logs(run_dir, ids["train"])
    final = checkpoint(run_dir)
    assert final["finished"] and final["step"] == 6 and len(final["rng"]) == 2
    assert same_weights(final, checkpoint(trained)), "2-node resume must end with the undisturbed 2-node weights"


# ------------------------------------------------------------------------------ slurm/*.sbatch by hand


def test_train_sbatch_by_hand_on_two_nodes_preempted_resumes_exactly(chain_run, slurm_cluster, tmp_path):
    """slurm/train.sbatch without submitit: the chain's 2-node training; USR2 to the batch script after
    step 2 -> the trap stops the workers, requeues, the job resumes and ends with the chain's weights."""
    trained, _ = chain_run
    job_id = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            f"--partition={slurm_cluster.partition}",
            f"--output={tmp_path}/train-%j.out",
            "slurm/train.sbatch",
            "configs/tiny.yaml",
            *FEW_STEPS,
            f"output_root={tmp_path}",
            "name=byhand",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    run_dir = tmp_path / "byhand"
    wait_step(run_dir, 2)
    subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], check=True)
    (ended,) = wait_ended(job_id, 420)
    assert ended["JobState"] == "COMPLETED" and ended["Restarts"] == "1"
    assert hostnames(ended["NodeList"]) == {"node1", "node2"}
    out = (tmp_path / f"train-{job_id}.out").read_text()
    assert "got USR2, stopping the workers and requeueing" in out and "restart 1:" in out
    final = checkpoint(run_dir)
    assert final["finished"] and final["step"] == 6 and len(final["rng"]) == 2
    assert same_weights(final, checkpoint(trained)), "train.sbatch must train exactly as launch.py does"


def test_eval_sbatch_by_hand_after_a_compression_killed_by_sigkill(chain_run, tmp_path):
    trained, _ = chain_run
    run_dir = tmp_path / "byhand"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "config.yaml", run_dir / "config.yaml")
    ckpt = run_dir / "checkpoints" / "last.pt"
    shutil.copy(trained / "checkpoints" / "last.pt", ckpt)
    rec_dir = tmp_path / "rec"
    env = {**ENV, "QGFACE_EVAL_ARGS": f"eval.rec_dir={rec_dir}"}

    def sbatch(*args: str) -> str:
        cmd = ["sbatch", "--parsable", f"--output={tmp_path}/eval-%A_%a.out", *args]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.strip()

    first = sbatch("--array=0", "slurm/eval.sbatch", str(ckpt), "tinyface")
    deadline = time.monotonic() + 240
    while not list(rec_dir.glob(".tinyface.rec.*.tmp")):  # the .rec is being written: kill -9 now
        assert time.monotonic() < deadline, "compression never started"
        time.sleep(0.005)
    for pid in processes("qgface.eval", str(ckpt)):
        os.kill(pid, signal.SIGKILL)
    (killed,) = wait_ended(first, 60)
    assert killed["JobState"] == "FAILED" and not (rec_dir / "tinyface.manifest.json").exists()

    array = sbatch("--array=0-1", "slurm/eval.sbatch", str(ckpt), "tinyface", "ijbb")
    tasks = wait_ended(array, 300)
    assert [t["JobState"] for t in tasks] == ["COMPLETED", "COMPLETED"]
    assert (rec_dir / "tinyface.manifest.json").is_file() and not list(rec_dir.glob(".*.tmp"))
    for name in ("tinyface", "ijbb"):
        assert json.loads((run_dir / "eval" / "last" / f"{name}.json").read_text())["status"] == "ok"
    done = subprocess.run(
        [sys.executable, "-m", "qgface.aggregate", str(run_dir)], env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    with open(run_dir / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert 0.0 <= float(row["tinyface_rank1"]) <= 100.0


# ---------------------------------------------------------------------------------- the ablation tool


def test_ablation_tool_on_slurm_submits_every_run_and_writes_the_table(slurm_cluster, tmp_path):
    """``tools/ablation.py --cluster slurm``: one ``launch.py --wait`` per run, all at once, then the table."""
    out = tmp_path / "ablation.md"
    command = minimal_ablation_command(
        tmp_path / "study",
        out,
        "--cluster",
        "slurm",
        overrides=(f"cluster.partition={slurm_cluster.partition}",),
    )
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count(": submitted (log ") == 2
    for name in ("baseline-seed0", "qgface-seed0"):
        log_text = (tmp_path / "study" / f"{name}.log").read_text()
        assert "train job: " in log_text and "finished: " in log_text
        (jobs_file,) = (tmp_path / "study").glob(f"{name}-*/slurm/jobs.json")
        assert json.loads(jobs_file.read_text())["mode"] == "slurm"
    rows = [
        line for line in out.read_text().splitlines() if line.startswith(("| Baseline | flip", "| D (QGFace) | LH"))
    ]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")][4:]
        assert len(cells) == 7 and all(0.0 <= float(cell) <= 100.0 for cell in cells)
