"""Train a QGFace model and evaluate it on every benchmark, on Slurm or on this machine.

    python launch.py                                              # the tiny demo, locally, minutes on a CPU
    python launch.py --nodes 2 --partition gpu --gpus-per-node 4 configs/qgface.yaml data.root=/data/faces_emore

Submits (Slurm) or runs in order (local): training (one torchrun per node) -> one evaluation task per
benchmark on the training nodes (afterok) -> aggregation into <run>/results.csv and TensorBoard
(afterany). Every flag is a shortcut for a config key (shown in its help); any key can also be given
as key=value, anywhere among the flags. Run `python -m qgface.config` to list every key. Mistakes
(unknown key, benchmark or backbone, missing data) are refused before anything is created or submitted.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from pathlib import Path

from qgface.cluster import (
    LocalRunInterrupted,
    Run,
    SlurmUnavailableError,
    ensure_data,
    follow,
    prepare_run,
    resolve_mode,
    run_local_chain,
    submit_chain,
    wait_for_chain,
)
from qgface.cluster.preflight import PreflightError, check_launch
from qgface.config import ConfigError, load_config
from qgface.models import CheckpointError
from qgface.vocab.benchmarks import BENCHMARK_NAMES, DEFAULT_BENCHMARKS

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
"""the config used when none is given: the tiny profile, a whole run in minutes on 2 CPU cores"""

# flag -> config key; the flag's value becomes the override key=value
FLAG_KEYS = {
    "nodes": "cluster.nodes",
    "gpus_per_node": "cluster.gpus_per_node",
    "partition": "cluster.partition",
    "time": "cluster.time_min",
    "account": "cluster.account",
    "qos": "cluster.qos",
    "constraint": "cluster.constraint",
    "cpus_per_task": "cluster.cpus_per_task",
    "mem": "cluster.mem",
    "name": "name",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("--nodes", type=int, help="training nodes, one torchrun each (cluster.nodes; default 1)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        help="GPUs = torchrun workers per node; 0 = one CPU worker with gloo (cluster.gpus_per_node; default 0)",
    )
    p.add_argument("--partition", help="Slurm partition of every job (cluster.partition; default: the cluster's)")
    p.add_argument(
        "--time",
        type=int,
        metavar="MIN",
        help="time limit of the training job in minutes; a job "
        "that hits it saves, is requeued and resumes (cluster.time_min; default 60)",
    )
    p.add_argument("--account", help="Slurm account (cluster.account)")
    p.add_argument("--qos", help="Slurm quality of service (cluster.qos)")
    p.add_argument("--constraint", help="Slurm node features, e.g. a100 (cluster.constraint)")
    p.add_argument(
        "--cpus-per-task",
        type=int,
        help="CPUs per node task: give the data loader workers room "
        "(cluster.cpus_per_task; default: GPUs x (1 + loader workers), also given to srun)",
    )
    p.add_argument("--mem", help="memory per node, e.g. 64G (cluster.mem; default: Slurm's)")
    p.add_argument(
        "--cluster",
        choices=("auto", "slurm", "local"),
        default="auto",
        help="where to run: slurm, local (this machine, one step after the other, waits for the end), "
        "or auto = slurm when sbatch is on PATH and the controller answers, else local (default)",
    )
    p.add_argument(
        "--benchmarks",
        nargs="+",
        metavar="NAME",
        help="benchmarks to evaluate after training: "
        f"{' '.join(BENCHMARK_NAMES)} (eval.benchmarks; default {' '.join(DEFAULT_BENCHMARKS)})",
    )
    p.add_argument("--no-eval", action="store_true", help="train only: no evaluation array, no aggregation")
    p.add_argument(
        "--wait",
        action="store_true",
        help="on Slurm, stay until the chain has ended and exit 0 only "
        "if it succeeded (for scripts; local mode always waits)",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="continue a run (run_dir=<run>) even when keys that "
        "change what is trained (model, data, losses, optimiser) differ from its config.yaml; the change "
        "is recorded in <run>/config_history.yaml with the step it took effect",
    )
    p.add_argument("--name", help="run name; the run directory is <output_root>/<name>-<YYYYmmdd-HHMMSS> (name)")
    p.add_argument(
        "args",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help=f"a YAML config (default {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])}), then "
        "overrides such as optim.lr=0.05 or data.root=/data/faces_emore; run_dir=<existing run> "
        "continues that run",
    )
    return p


def config_from_args(ns: argparse.Namespace) -> tuple[Path, list[str]]:
    """(config file, overrides): key=value arguments first, then the flags, which win."""
    config, overrides = DEFAULT_CONFIG, []
    # --benchmarks takes several values, so it also swallows key=value arguments that follow it
    benchmarks = [b for b in ns.benchmarks or [] if "=" not in b]
    items = list(ns.args) + [b for b in ns.benchmarks or [] if "=" in b]
    for i, arg in enumerate(items):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0:
            config = Path(arg)
        else:
            raise ConfigError(
                f"argument {arg!r}: only the first argument may be a config file; "
                "the others must be key=value overrides"
            )
    for flag, key in FLAG_KEYS.items():
        value = getattr(ns, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if benchmarks:
        overrides.append(f"eval.benchmarks=[{','.join(benchmarks)}]")
    return config, overrides


def continue_command(ns: argparse.Namespace, run_dir: Path) -> str:
    """The exact command that continues ``run_dir`` with its own settings."""
    flags = [f"--cluster {ns.cluster}"] if ns.cluster != "auto" else []
    flags += ["--no-eval"] if ns.no_eval else []
    return " ".join(
        [
            Path(sys.executable).name if _on_path(sys.executable) else sys.executable,
            sys.argv[0],
            *flags,
            shlex.quote(str(run_dir / "config.yaml")),
        ]
    )


def _on_path(executable: str) -> bool:
    found = shutil.which(Path(executable).name)
    return found is not None and Path(found).resolve() == Path(executable).resolve()


def _tensorboard_command() -> str:
    """The tensorboard of this Python's environment (the venv's, so it runs without activating it)."""
    beside = Path(sys.executable).with_name("tensorboard")
    return str(beside) if beside.is_file() else "tensorboard"


def print_summary(run: Run, evaluate: bool, output_root: str) -> None:
    """The headline table (when there are results) and where everything of the run is."""
    from qgface.eval.aggregate import headline_table, read_csv_rows

    results = run.run_dir / "results.csv"
    if evaluate and results.is_file():
        rows = read_csv_rows(results)
        if rows:
            print("\n" + headline_table(rows) + "\n")
    where = [
        ("run directory", f"{run.run_dir}/"),
        ("config", f"{run.config_path} (changes: {run.run_dir / 'config_history.yaml'})"),
        ("checkpoints", f"{run.run_dir / 'checkpoints'}/ (last.pt, epoch_<e>.pt)"),
        ("results", f"{results}" if evaluate else "(no evaluation: --no-eval)"),
        ("per benchmark", f"{run.run_dir / 'eval'}/<checkpoint>/<benchmark>.json"),
        ("job logs", f"{run.run_dir / 'slurm'}/ (jobs.json, <job>_0_log.out/.err)"),
        ("TensorBoard", f"{_tensorboard_command()} --logdir {output_root}/"),
    ]
    for label, value in where:
        print(f"  {label:<14} {value}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns = build_parser().parse_intermixed_args(argv)
    evaluate = not ns.no_eval
    try:
        config, overrides = config_from_args(ns)
        cfg = load_config(config, overrides)
        mode = resolve_mode(ns.cluster)
        check_launch(cfg, evaluate=evaluate)
        fresh = not cfg.run_dir
        run = prepare_run(cfg, source=str(config), allow_changes=ns.allow_changes)
    except (ConfigError, PreflightError, SlurmUnavailableError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {run.run_dir}", flush=True)

    def report(line: str) -> None:
        print(line, flush=True)

    tensorboard = f"{_tensorboard_command()} --logdir {cfg.output_root}/"
    try:
        ensure_data(run, evaluate=evaluate)
        if mode == "slurm":
            try:
                chain = submit_chain(run, evaluate=evaluate, report=report)
            except Exception as err:  # sbatch refused: nothing runs, so nothing of the run is kept
                if fresh:
                    shutil.rmtree(run.run_dir, ignore_errors=True)
                print(
                    f"error: submission failed: {(str(err).strip().splitlines() or [repr(err)])[-1]}", file=sys.stderr
                )
                return 1
            print(f"follow it with: {tensorboard}   (results: {run.run_dir / 'results.csv'})", flush=True)
            if not ns.wait:
                return 0
            ok = wait_for_chain(chain, report=report)
        else:
            print(f"watch it with: {tensorboard}", flush=True)
            ok = run_local_chain(run, evaluate=evaluate, report=report) == 0
    except (KeyboardInterrupt, LocalRunInterrupted) as err:
        what = err.what if isinstance(err, LocalRunInterrupted) else "setting up"
        step = follow.last_step(run.run_dir)
        saved = f"last.pt was saved at step {step}" if step is not None else "no checkpoint was saved yet"
        print(
            f"interrupted during {what}: {saved}; continue with: {continue_command(ns, run.run_dir)}", file=sys.stderr
        )
        return 130
    print(f"{'finished' if ok else 'FAILED'}: {run.run_dir}" + ("" if ns.no_eval else "/results.csv"))
    print_summary(run, evaluate, cfg.output_root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
