"""launch.py refuses mistakes on the login node: one line, exit 2, no run directory left behind.
And inside a job: a deterministic training error is not retried, and its root cause reaches the
terminal; Ctrl-C on a local run saves last.pt and says how to continue."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qgface.data.synthetic import generate_training_set

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch.py"
TINY = [
    "model.backbone=ir_tiny",
    "data.batch_size=8",
    "contrast.queue_size=64",
    "data.num_workers=0",
    "eval.num_workers=0",
    "train.log_every=1",
]


def _launch_module():
    spec = importlib.util.spec_from_file_location("qgface_launch_checks", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def launch():
    return _launch_module()


@pytest.fixture(scope="module")
def train_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("launch-set") / "set"
    generate_training_set(root, identities=8, images_per_identity=4, workers=1)
    return root


def _refused(launch, capsys, tmp_path, *args: str) -> str:
    logs = tmp_path / "logs"
    assert launch.main(["--cluster", "local", *args, f"output_root={logs}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not logs.exists() or not any(logs.iterdir()), "a refused launch left a run directory"
    return err


def test_unknown_benchmark_and_backbone(launch, capsys, tmp_path):
    err = _refused(launch, capsys, tmp_path, "--benchmarks", "lfw")
    assert "eval.benchmarks: 'lfw' is not a benchmark" in err and "as hq" in err
    assert "model.backbone='ir500' is not a backbone" in _refused(launch, capsys, tmp_path, "model.backbone=ir500")


def test_a_best_metric_the_validation_sets_do_not_produce_is_refused(launch, capsys, tmp_path):
    err = _refused(launch, capsys, tmp_path, "eval.every_steps=100", "eval.val_benchmarks=[crlfw]")
    assert "eval.best_metric='hq_avg' is not a metric of eval.val_benchmarks=['crlfw']" in err and "crlfw_avg" in err


def test_unknown_override_is_blamed_on_itself(launch, capsys, tmp_path):
    err = _refused(launch, capsys, tmp_path, str(REPO / "configs" / "tiny.yaml"), "optim.lrr=0.5")
    assert "override 'optim.lrr=0.5': unknown key 'optim.lrr'; did you mean 'optim.lr'?" in err


def test_training_data_root_is_checked(launch, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _refused(launch, capsys, tmp_path, "--no-eval", f"data.root={empty}")
    assert f"data.root={empty}: " in err and "neither train.rec + train.idx" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.rec").write_bytes(b"\0" * 64)
    (bad / "train.idx").write_text("0\t0\n")
    assert f"data.root={bad}: " in _refused(launch, capsys, tmp_path, "--no-eval", f"data.root={bad}")
    missing = tmp_path / "nowhere"
    assert "does not exist" in _refused(launch, capsys, tmp_path, "--no-eval", f"data.root={missing}")


def test_eval_data_root_is_checked_for_the_chosen_benchmarks(launch, capsys, tmp_path, train_root):
    err = _refused(
        launch, capsys, tmp_path, "--benchmarks", "tinyface", f"data.root={train_root}", f"eval.data_root={tmp_path}"
    )
    assert f"eval.data_root={tmp_path}: benchmark tinyface needs tinyface/Testing_Set/probe_img_ID_pairs.mat" in err


def test_overrides_are_accepted_anywhere_among_the_flags(launch):
    ns = launch.build_parser().parse_intermixed_args(
        ["configs/tiny.yaml", "--no-eval", "optim.lr=0.05", "--benchmarks", "hq", "scface", "seed=3"]
    )
    config, overrides = launch.config_from_args(ns)
    assert config == Path("configs/tiny.yaml") and ns.no_eval
    assert overrides == ["optim.lr=0.05", "seed=3", "eval.benchmarks=[hq,scface]"]


def test_cluster_slurm_without_slurm_is_one_line(launch, capsys, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert launch.main(["--cluster", "slurm", f"output_root={logs}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --cluster slurm: sbatch is not on PATH; run on a Slurm login node, or use --cluster local"
    (tmp_path / "bin").mkdir()
    for tool, code in (("sbatch", 0), ("sinfo", 1)):
        (tmp_path / "bin" / tool).write_text(
            f"#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller' >&2\nexit {code}\n"
        )
        (tmp_path / "bin" / tool).chmod(0o755)
    assert launch.main(["--cluster", "slurm", f"output_root={logs}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the Slurm controller does not answer" in err and "Unable to contact" in err
    assert not logs.exists()


def _run_launch(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(LAUNCH), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_a_non_finite_loss_is_not_retried_and_its_cause_reaches_the_terminal(tmp_path, train_root):
    done = _run_launch(
        "--cluster",
        "local",
        "--no-eval",
        f"data.root={train_root}",
        *TINY,
        "optim.lr=1e30",
        "train.max_restarts=3",
        f"output_root={tmp_path / 'logs'}",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "train failed: training failed (not retried: it would fail again): NonFiniteLossError: non-finite loss at step"
        in done.stdout
    )
    (err_log,) = (tmp_path / "logs").glob("*/slurm/*_0_log.err")
    assert err_log.read_text().count("ERROR qgface.train: non-finite loss") == 1, (
        "torchrun restarted a deterministic error"
    )


@pytest.mark.slow
def test_ctrl_c_saves_last_pt_and_prints_the_command_that_continues(tmp_path, train_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        "--cluster",
        "local",
        "--no-eval",
        f"data.root={train_root}",
        *TINY,
        "optim.epochs=50",
        "optim.milestones=[40]",
        "train.checkpoint_every=1000",
        f"output_root={tmp_path / 'logs'}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCH), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # SIGINT as in a terminal: started by a script in the background (``cmd &``), pytest inherits it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    deadline = time.monotonic() + 240
    while not any(" step 3/" in line for line in lines):  # progress reaches the terminal in local mode
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, "".join(lines)
        lines.append(line)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, "".join(lines) + out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    (message,) = [line for line in err.splitlines() if "interrupted" in line]
    assert err.strip().splitlines()[-1] == message, err
    (run_dir,) = (tmp_path / "logs").iterdir()
    step = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert step >= 3
    assert message.startswith(f"interrupted during train: last.pt was saved at step {step}; continue with: ")
    assert message.endswith(f"--cluster local --no-eval {run_dir / 'config.yaml'}")
