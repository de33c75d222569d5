"""The callables Slurm (or submitit's local executor) runs: training per node, one evaluation, aggregation.

Each is a small picklable object that carries only paths; every step runs the package's own entry
points (``python -m qgface.train|qgface.eval|qgface.aggregate``) in a child process, exactly as the
plain ``slurm/*.sbatch`` scripts do, so launch.py and hand-written sbatch share one code path.

Preemption and time limits (DESIGN.md "torchrun under submitit", STYLE.md §6.8): Slurm sends the
submitit signal (USR2) and/or SIGTERM to every process of the job step. ``TrainTask`` asks the
torchrun process group of its node to stop (SIGTERM; torchrun hands it on to its workers, which
finish the step, save ``last.pt`` and exit with ``qgface.train.REQUEUE_EXIT_CODE``) on every node.
On task 0 submitit then calls ``checkpoint()``, which waits (bounded) for torchrun and its workers to
exit and returns a fresh ``TrainTask`` for the same config: submitit requeues the job, which resumes
from ``last.pt`` (``train.resume=auto``). Tasks on the other nodes only stop their torchrun and wait
for Slurm to end the step.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from qgface.cluster import slurm_env
from qgface.cluster.process_tree import ProcessTree

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 90.0
"""how long a stopping torchrun and its workers get to save and exit; below the Slurm signal delay"""
REQUEUE_GRACE_S = 300.0
"""after a stop on Slurm, how long a task waits for the requeue (USR2 -> checkpoint) or Slurm's SIGKILL"""
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
"""signals torchrun turns into a graceful shutdown: Slurm sends USR2/USR1 to torchrun too, whose default action kills"""
TRAIN_ERROR_ENV = "QGFACE_TRAIN_ERROR_FILE"
"""environment variable naming the file where a training worker records the error that stopped it:
``{"deterministic": bool, "error": line}`` (qgface.train's entry point writes it)"""
JOBS_FILE = "jobs.json"
"""<run>/slurm/jobs.json: the job ids of a launched chain, read by the training task to pin the eval array"""


class JobStepError(RuntimeError):
    """A step of the chain (training, one evaluation, aggregation) failed; the message says where to look."""


def setup_logging() -> None:
    """INFO messages into the task's log file (a job process is an entry point of its own), and Ctrl-C
    back to its default: the local launcher starts its jobs with SIGINT ignored (so that submitit's
    controller never prints a KeyboardInterrupt traceback on the user's terminal), and a task passes
    the default on to the entry points it runs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.default_int_handler)


def train_error_file(run_dir: Path, job_id: str) -> Path:
    """Where the training workers of job ``job_id`` record the error that stopped them (``TRAIN_ERROR_ENV``)."""
    return run_dir / "slurm" / f"{job_id}_train_error.json"


def torchrun_command(config_path: str, nproc: int, max_restarts: int, node: slurm_env.NodeTask | None) -> list[str]:
    """The torchrun command line of one node; ``node=None`` = a single-node standalone rendezvous."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if node is None:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        cmd += [
            "--nnodes",
            str(node.num_nodes),
            "--node_rank",
            str(node.node_rank),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            node.rdzv_endpoint,
            "--rdzv_id",
            f"qgface-{node.job_id}",
        ]
    cmd += ["--nproc_per_node", str(max(nproc, 1)), "--max_restarts", str(max_restarts)]
    if _torchrun_handles_signal_list():
        cmd += ["--signals_to_handle", TORCHRUN_SIGNALS]
    return cmd + ["-m", "qgface.train", config_path]


def _torchrun_handles_signal_list() -> bool:
    from torch.distributed.launcher.api import LaunchConfig  # torch only where torchrun is started

    return "signals_to_handle" in LaunchConfig.__dataclass_fields__


class TrainTask:
    """Per-node training task: runs torchrun for ``config_path`` (a run's config.yaml), see module doc."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self._torchrun: ProcessTree | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config_path": self.config_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config_path"])  # type: ignore[misc]

    def __call__(self) -> dict[str, Any]:
        import submitit

        from qgface.config import load_config

        setup_logging()
        cfg = load_config(self.config_path)
        env = submitit.JobEnvironment()
        on_slurm = env.cluster == "slurm"
        node = slurm_env.current_node_task() if on_slurm else None
        if node is not None and node.node_rank == 0:
            _pin_eval_array(cfg.resolved_run_dir(), node, cfg.cluster.partition)
        cmd = torchrun_command(self.config_path, cfg.cluster.gpus_per_node, cfg.train.max_restarts, node)
        host, rank = socket.gethostname(), node.node_rank if node else 0
        log.info("train task: node_rank=%d host=%s: %s", rank, host, " ".join(cmd))
        error_file = train_error_file(cfg.resolved_run_dir(), str(env.job_id))
        if rank == 0:
            error_file.unlink(missing_ok=True)  # from an earlier start of this job (requeue)
        child_env = dict(
            os.environ, TORCH_ELASTIC_SHUTDOWN_TIMEOUT=str(int(STOP_TIMEOUT_S)), **{TRAIN_ERROR_ENV: str(error_file)}
        )
        self._torchrun = ProcessTree(cmd, env=child_env)
        self._install_signal_handlers(signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"])
        # torchrun's restarts are for crashes: a deterministic error (bad data or config, a corrupt
        # record, a non-finite loss) would only happen again, so it stops torchrun at once
        code = self._torchrun.wait(stop_when=lambda: bool(_read_train_error(error_file).get("deterministic")))
        log.info("train task: node_rank=%d host=%s: torchrun exited with %d", rank, host, code)
        if code == 0:
            return {"hostname": host, "node_rank": rank, "torchrun_exit": 0}
        recorded = _read_train_error(error_file)
        if recorded.get("deterministic"):
            self._torchrun.wait_all(STOP_TIMEOUT_S)
            raise JobStepError(f"training failed (not retried: it would fail again): {recorded['error']}")
        if self._torchrun.stop_signal is None:
            cause = f"; the last worker error: {recorded['error']}" if recorded.get("error") else ""
            raise JobStepError(
                f"training failed on {host} (node_rank {rank}): torchrun exited with {code} after at most "
                f"train.max_restarts={cfg.train.max_restarts} restarts{cause}"
            )
        self._torchrun.wait_all(STOP_TIMEOUT_S)
        if on_slurm:
            # Slurm either requeues the job (USR2 -> checkpoint() on task 0) or kills it; wait for that
            log.info("train task: stopped by signal %d, last.pt saved; waiting for Slurm", self._torchrun.stop_signal)
            time.sleep(REQUEUE_GRACE_S)
        raise JobStepError(
            f"training on {host} was stopped by signal {self._torchrun.stop_signal}; last.pt is saved, "
            "launch the same run again (run_dir=<run>) to resume"
        )

    def checkpoint(self) -> Any:
        """submitit's requeue hook (task 0 only): stop torchrun, wait for the save, requeue a fresh task."""
        import submitit

        if self._torchrun is not None:
            self._torchrun.stop(signal.SIGTERM)
            if not self._torchrun.wait_all(STOP_TIMEOUT_S):
                log.warning("torchrun did not exit within %.0f s; requeuing anyway", STOP_TIMEOUT_S)
        return submitit.helpers.DelayedSubmission(TrainTask(self.config_path))

    def _install_signal_handlers(self, usr_sig: int) -> None:
        """SIGTERM and submitit's signal stop torchrun on every node; then submitit's own handler runs
        (it calls checkpoint() and requeues on task 0, and does nothing on the other tasks)."""
        previous = signal.getsignal(usr_sig)

        def on_usr_sig(signum: int, frame: FrameType | None) -> None:
            assert self._torchrun is not None
            self._torchrun.stop(signal.SIGTERM)
            if callable(previous):
                previous(signum, frame)

        def on_term(signum: int, frame: FrameType | None) -> None:
            log.warning("train task: received signal %d, stopping torchrun", signum)
            assert self._torchrun is not None
            self._torchrun.stop(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)  # how submitit's local executor cancels a job
        signal.signal(usr_sig, on_usr_sig)


def _read_train_error(path: Path) -> dict[str, Any]:
    """The error a training worker recorded in ``path`` ({} when none, or while it is being replaced)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pin_eval_array(run_dir: Path, node: slurm_env.NodeTask, partition: str) -> None:
    """Restrict the pending evaluation array of this run to the training job's nodes (DESIGN.md)."""
    jobs_file = run_dir / "slurm" / JOBS_FILE
    if not jobs_file.is_file():
        return
    array_id = json.loads(jobs_file.read_text()).get("eval_array")
    if not array_id:
        return
    try:
        slurm_env.restrict_to_nodes(str(array_id), node.nodes, partition)
    except slurm_env.SlurmCommandError as err:
        log.warning("could not pin evaluation array %s to nodes %s: %s", array_id, ",".join(node.nodes), err)


def run_entry_point(args: Sequence[str], what: str) -> None:
    """Run ``python -m <args>`` and raise JobStepError naming ``what`` on a non-zero exit."""
    cmd = [sys.executable, "-m", *args]
    log.info("%s: %s", what, " ".join(cmd))
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False)
    sys.stderr.write(done.stderr)
    sys.stderr.flush()
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise JobStepError(f"{what} failed with exit code {done.returncode}:\n{tail}")


class EvalTask:
    """One evaluation array task: ``python -m qgface.eval --checkpoint CKPT --benchmark NAME`` for every
    checkpoint ``eval.checkpoints`` names (resolved when the task runs, after training has saved them)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __call__(self, benchmark: str) -> dict[str, Any]:
        from qgface.config import load_config
        from qgface.eval.run import checkpoints_to_evaluate

        setup_logging()
        spec = load_config(Path(self.run_dir) / "config.yaml").eval.checkpoints
        checkpoints = checkpoints_to_evaluate(self.run_dir, spec)
        failures = []
        for checkpoint in checkpoints:
            args = ["qgface.eval", "--checkpoint", str(checkpoint), "--benchmark", benchmark]
            try:
                run_entry_point(args, f"evaluation of {benchmark} on {checkpoint.name}")
            except JobStepError as err:
                failures.append(str(err))
        if failures:
            raise JobStepError("\n".join(failures))
        return {"benchmark": benchmark, "checkpoints": [str(c) for c in checkpoints], "hostname": socket.gethostname()}


class AggregateTask:
    """The aggregation job: ``python -m qgface.aggregate RUN_DIR`` (fails naming the missing benchmarks)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __call__(self) -> dict[str, Any]:
        setup_logging()
        run_entry_point(["qgface.aggregate", self.run_dir], f"aggregation of {self.run_dir}")
        return {"results": str(Path(self.run_dir) / "results.csv"), "hostname": socket.gethostname()}
