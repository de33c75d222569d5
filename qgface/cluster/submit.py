"""The job chain of a run: training -> evaluation array (afterok, same nodes) -> aggregation (afterany).

On Slurm (DESIGN.md "What a user does"):

1. training, submitted *held*: ``nodes`` x 1 task, each running torchrun (``jobs.TrainTask``);
2. the evaluation array, one task per ``eval.benchmarks`` entry, ``afterok`` on training and
   ``--kill-on-invalid-dep=yes`` (a failed training cancels it instead of leaving it pending forever);
3. aggregation, ``afterany`` on the array, so it also runs (and reports the gaps) when tasks failed;
4. the ids go to ``<run>/slurm/jobs.json``, then training is released. Its task 0 reads that file
   at every start (also after a requeue) and sets the array's ``ExcNodeList`` to every node of the
   partition outside its own allocation, so the array runs on the training nodes. The hold makes
   sure the file exists before training can start; ``afterok`` makes sure the array cannot start
   before task 0 has pinned it.

Locally (no ``sbatch``, or ``--cluster local``) the same callables run one after the other through
submitit's local executor, and ``run_local_chain`` waits for them. Preparing the run directory
(before any of this) is :mod:`qgface.cluster.run_dir`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import submitit

from qgface.atomic import atomic_write_text
from qgface.cluster import follow, jobs, slurm_env
from qgface.cluster.run_dir import Run
from qgface.cluster.slurm_env import array_id
from qgface.config import ClusterConfig, Config
from qgface.data.cpus import REQUEST_WORKERS, cpus_needed

log = logging.getLogger(__name__)

SIGNAL_DELAY_S = 120
"""submitit's USR2 arrives this long before the time limit: time for torchrun's workers to save"""
AGGREGATE_TIME_MIN = 30
"""time limit of the aggregation job"""

Report = Callable[[str], None]


@dataclass
class Chain:
    """The submitted jobs of a run (eval/aggregate empty with ``--no-eval``)."""

    mode: str
    train: submitit.Job
    evals: list[submitit.Job] = field(default_factory=list)
    aggregate: submitit.Job | None = None

    def ids(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "train": self.train.job_id}
        if self.evals:
            out["eval_array"] = array_id(self.evals[0].job_id)
            out["eval_tasks"] = [job.job_id for job in self.evals]
        if self.aggregate is not None:
            out["aggregate"] = self.aggregate.job_id
        return out


class SlurmUnavailableError(RuntimeError):
    """``--cluster slurm`` was asked for, but there is no Slurm to submit to (one line saying why)."""


def resolve_mode(cluster: str) -> str:
    """``auto`` = ``slurm`` when ``sbatch`` is on PATH and the controller answers, else ``local``;
    ``slurm`` raises SlurmUnavailableError when either is not the case.

    Asking the controller keeps a laptop or CI box that has the Slurm client installed but no
    cluster running on the local path instead of failing at submission.
    """
    if cluster not in ("auto", "slurm", "local"):
        raise ValueError(f"cluster must be auto, slurm or local; got {cluster!r}")
    if cluster == "local":
        return cluster
    if not shutil.which("sbatch"):
        if cluster == "slurm":
            raise SlurmUnavailableError(
                "--cluster slurm: sbatch is not on PATH; run on a Slurm login node, or use --cluster local"
            )
        return "local"
    try:
        slurm_env.run_slurm("sinfo", "--noheader", "--format=%P", timeout_s=15)
    except slurm_env.SlurmCommandError as err:
        if cluster == "slurm":
            reason = (str(err).splitlines() or [""])[0]
            raise SlurmUnavailableError(
                f"--cluster slurm: the Slurm controller does not answer ({reason}); "
                "check `sinfo`, or use --cluster local"
            ) from None
        log.warning("sbatch is installed but Slurm does not answer (%s): running locally", err)
        return "local"
    return "slurm"


def train_cpus_per_task(cfg: Config) -> int:
    """CPUs of a training node task: ``cluster.cpus_per_task``, or for 0 one per training process
    (``max(gpus_per_node, 1)`` of them) and one per loader worker of each (``data.num_workers``;
    ``REQUEST_WORKERS`` for -1, whose count the workers then derive from what Slurm granted)."""
    if cfg.cluster.cpus_per_task > 0:
        return cfg.cluster.cpus_per_task
    workers = cfg.data.num_workers if cfg.data.num_workers >= 0 else REQUEST_WORKERS
    return cpus_needed(workers, max(cfg.cluster.gpus_per_node, 1))


def eval_cpus_per_task(cfg: Config) -> int:
    """CPUs of an evaluation task: ``cluster.cpus_per_task``, or for 0 one plus ``eval.num_workers``."""
    return cfg.cluster.cpus_per_task if cfg.cluster.cpus_per_task > 0 else cpus_needed(cfg.eval.num_workers, 1)


def _executor(
    run: Run, mode: str, name: str, *, nodes: int, gpus: int, time_min: int, cpus: int
) -> submitit.AutoExecutor:
    """An executor whose logs go to ``<run>/slurm/``; Slurm-only settings from ``cfg.cluster`` when set.

    ``cpus`` go to the job (``--cpus-per-task``) and to its ``srun`` too: since Slurm 22.05 a step
    does not inherit the job's ``--cpus-per-task``, and its task would run on one CPU.
    """
    c = run.cfg.cluster
    ex = submitit.AutoExecutor(folder=run.run_dir / "slurm", cluster=mode, slurm_max_num_timeout=c.max_requeues)
    ex.update_parameters(
        name=f"{run.cfg.name}-{name}", timeout_min=time_min, tasks_per_node=1, nodes=nodes, cpus_per_task=cpus
    )
    if gpus > 0:
        ex.update_parameters(gpus_per_node=gpus)
    ex.update_parameters(**{f"slurm_{k}": v for k, v in slurm_parameters(c, time_min, cpus).items()})
    return ex


def slurm_parameters(c: ClusterConfig, time_min: int, cpus: int) -> dict[str, Any]:
    """submitit's Slurm-only parameters (without the ``slurm_`` prefix) of a job of ``cpus`` CPUs per task."""
    # a short time limit gets a proportionally earlier warning, never one at the very start
    slurm: dict[str, Any] = {
        "signal_delay_s": min(SIGNAL_DELAY_S, max(10, time_min * 60 // 5)),
        "srun_args": [f"--cpus-per-task={cpus}"],
    }
    for key in ("partition", "mem", "account", "qos", "constraint"):
        if getattr(c, key):
            slurm[key] = getattr(c, key)
    return slurm


def submit_chain(run: Run, evaluate: bool = True, report: Report = log.info) -> Chain:
    """Submit training, the evaluation array and aggregation to Slurm; returns without waiting."""
    c, benchmarks = run.cfg.cluster, list(run.cfg.eval.benchmarks)
    train_ex = _executor(
        run,
        "slurm",
        "train",
        nodes=c.nodes,
        gpus=c.gpus_per_node,
        time_min=c.time_min,
        cpus=train_cpus_per_task(run.cfg),
    )
    train_ex.update_parameters(slurm_additional_parameters={"hold": True})
    chain = Chain("slurm", train_ex.submit(jobs.TrainTask(str(run.config_path))))
    try:
        report(f"train job: {chain.train.job_id} ({c.nodes} node(s) x {max(c.gpus_per_node, 1)} worker(s))")
        if evaluate and benchmarks:
            eval_ex = _executor(
                run,
                "slurm",
                "eval",
                nodes=1,
                gpus=min(c.gpus_per_node, 1),
                time_min=c.eval_time_min,
                cpus=eval_cpus_per_task(run.cfg),
            )
            eval_ex.update_parameters(
                slurm_dependency=f"afterok:{chain.train.job_id}",
                slurm_additional_parameters={"kill_on_invalid_dep": "yes"},
            )
            chain.evals = eval_ex.map_array(jobs.EvalTask(str(run.run_dir)), benchmarks)
            eval_array = array_id(chain.evals[0].job_id)
            report(f"eval array: {eval_array} ({', '.join(benchmarks)}; afterok:{chain.train.job_id}, same nodes)")
            agg_ex = _executor(run, "slurm", "aggregate", nodes=1, gpus=0, time_min=AGGREGATE_TIME_MIN, cpus=1)
            agg_ex.update_parameters(slurm_dependency=f"afterany:{eval_array}")
            chain.aggregate = agg_ex.submit(jobs.AggregateTask(str(run.run_dir)))
            report(f"aggregate job: {chain.aggregate.job_id} (afterany:{eval_array})")
        atomic_write_text(run.run_dir / "slurm" / jobs.JOBS_FILE, json.dumps(chain.ids(), indent=2) + "\n")
        slurm_env.run_slurm("scontrol", "release", chain.train.job_id)
    except BaseException:
        _cancel(chain)
        raise
    return chain


def _cancel(chain: Chain) -> None:
    ids = [chain.train.job_id] + [array_id(j.job_id) for j in chain.evals[:1]]
    ids += [chain.aggregate.job_id] if chain.aggregate is not None else []
    log.error("submission failed: cancelling jobs %s", " ".join(ids))
    try:
        slurm_env.run_slurm("scancel", *ids)
    except slurm_env.SlurmCommandError as err:
        log.error("%s", err)


class LocalRunInterrupted(Exception):
    """Ctrl-C stopped a local chain during ``what``; the step it stopped in has ended (or was killed)."""

    def __init__(self, what: str, stopped: bool) -> None:
        super().__init__(what)
        self.what, self.stopped = what, stopped


def run_local_chain(run: Run, evaluate: bool = True, report: Report = log.info) -> int:
    """Run the chain locally, one step after the other; 0 when aggregation (or training) succeeded.

    Training's progress lines are reported as they come; ``<run>/slurm/jobs.json`` holds the local
    job ids, as on Slurm. Ctrl-C stops the running step (training saves last.pt first) and raises
    LocalRunInterrupted."""
    c = run.cfg.cluster
    if c.nodes > 1:
        log.warning("local mode runs on this machine only: cluster.nodes=%d treated as 1", c.nodes)
    ids: dict[str, Any] = {"mode": "local"}
    train = LocalStep("train", "train", gpus=c.gpus_per_node, time_min=c.time_min, cpus=train_cpus_per_task(run.cfg))
    train_ok = _run_local(run, train, report, ids, jobs.TrainTask(str(run.config_path)))
    if not evaluate or not run.cfg.eval.benchmarks:
        return 0 if train_ok else 1
    if train_ok:
        for benchmark in run.cfg.eval.benchmarks:
            step = LocalStep(
                "eval",
                f"eval {benchmark}",
                gpus=min(c.gpus_per_node, 1),
                time_min=c.eval_time_min,
                cpus=eval_cpus_per_task(run.cfg),
            )
            _run_local(run, step, report, ids, jobs.EvalTask(str(run.run_dir)), benchmark)
    else:
        report("training failed: no evaluation; aggregation reports every benchmark as missing")
    aggregate = LocalStep("aggregate", "aggregate", gpus=0, time_min=c.time_min, cpus=1)
    agg_ok = _run_local(run, aggregate, report, ids, jobs.AggregateTask(str(run.run_dir)))
    return 0 if agg_ok and train_ok else 1


@dataclass(frozen=True)
class LocalStep:
    """One step of a local chain: its kind (train | eval | aggregate: the job name and its jobs.json key),
    the label it is reported under, and its resources."""

    kind: str
    label: str
    gpus: int
    time_min: int
    cpus: int


def _run_local(
    run: Run, step: LocalStep, report: Report, ids: dict[str, Any], fn: Callable[..., Any], *args: Any
) -> bool:
    what = step.label
    executor = _executor(run, "local", step.kind, nodes=1, gpus=step.gpus, time_min=step.time_min, cpus=step.cpus)
    job = follow.start_ignoring_interrupts(lambda: executor.submit(fn, *args))
    report(f"{what} job: {job.job_id} (local; log {job.paths.stdout})")
    if step.kind == "eval":
        ids.setdefault("eval_tasks", []).append(job.job_id)
    else:
        ids[step.kind] = job.job_id
    atomic_write_text(run.run_dir / "slurm" / jobs.JOBS_FILE, json.dumps(ids, indent=2) + "\n")
    try:
        follow.follow(job, report)
    except KeyboardInterrupt:
        raise LocalRunInterrupted(what, follow.stop(job, jobs.STOP_TIMEOUT_S + 30)) from None
    return report_outcome(job, what, report)


def report_outcome(job: submitit.Job, what: str, report: Report) -> bool:
    """Wait for the job's result and report ``<what> done`` or ``<what> failed: <its error>``; True when done."""
    try:
        job.result()
    except Exception as err:  # submitit re-raises the job's error (FailedJobError, UncompletedJobError)
        report(f"{what} failed: {_error_summary(err)} (log: {job.paths.stderr})")
        return False
    report(f"{what} done")
    return True


def _error_summary(err: Exception) -> str:
    """The exception line of a job's remote traceback (submitit wraps it in a long message)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if "Error: " in line or "Exception: " in line]
    line = raised[-1] if raised else (lines[0] if lines else repr(err))
    # our own wrapper adds nothing for the user: "qgface.cluster.jobs.JobStepError: training failed: ..."
    return line.split("JobStepError: ", 1)[1] if "JobStepError: " in line else line
