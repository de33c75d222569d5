"""Train a QGFace model and evaluate it on every benchmark, on Slurm or on this machine.

    python launch.py                                              # the tiny demo, locally, minutes on a CPU
    python launch.py --nodes 2 --partition gpu --gpus-per-node 4 configs/qgface.yaml data.root=/data/faces_emore

Submits (Slurm) or runs in order (local): training (one torchrun per node) -> one evaluation task per
benchmark on the training nodes (afterok) -> aggregation into <run>/results.csv and TensorBoard
(afterany). Every flag is a shortcut for a config key (shown in its help); any key can also be given
as key=value after the config file. Run `python -m qgface.config` to list every key.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from qgface.cluster import ensure_data, prepare_run, resolve_mode, run_local_chain, submit_chain, wait_for_chain
from qgface.config import ConfigError, load_config

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
    p.add_argument("--gpus-per-node", type=int, help="GPUs = torchrun workers per node; 0 = one CPU worker "
                   "with gloo (cluster.gpus_per_node; default 0)")
    p.add_argument("--partition", help="Slurm partition of every job (cluster.partition; default: the cluster's)")
    p.add_argument("--time", type=int, metavar="MIN", help="time limit of the training job in minutes; a job "
                   "that hits it saves, is requeued and resumes (cluster.time_min; default 60)")
    p.add_argument("--account", help="Slurm account (cluster.account)")
    p.add_argument("--qos", help="Slurm quality of service (cluster.qos)")
    p.add_argument("--constraint", help="Slurm node features, e.g. a100 (cluster.constraint)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per node task: give the data loader workers room "
                   "(cluster.cpus_per_task; default: Slurm's)")
    p.add_argument("--mem", help="memory per node, e.g. 64G (cluster.mem; default: Slurm's)")
    p.add_argument("--cluster", choices=("auto", "slurm", "local"), default="auto",
                   help="where to run: slurm, local (this machine, one step after the other, waits for the end), "
                   "or auto = slurm when sbatch is on PATH and the controller answers, else local (default)")
    p.add_argument("--benchmarks", nargs="+", metavar="NAME", help="benchmarks to evaluate after training: "
                   "hq crlfw tinyface scface ijbb ijbc (eval.benchmarks; default all six)")
    p.add_argument("--no-eval", action="store_true", help="train only: no evaluation array, no aggregation")
    p.add_argument("--wait", action="store_true", help="on Slurm, stay until the chain has ended and exit 0 only "
                   "if it succeeded (for scripts; local mode always waits)")
    p.add_argument("--allow-changes", action="store_true", help="continue a run (run_dir=<run>) even when keys that "
                   "change what is trained (model, data, losses, optimiser) differ from its config.yaml; the change "
                   "is recorded in <run>/config_history.yaml with the step it took effect")
    p.add_argument("--name", help="run name; the run directory is <output_root>/<name>-<YYYYmmdd-HHMMSS> (name)")
    p.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]",
                   help=f"a YAML config (default {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])}), then "
                   "overrides such as optim.lr=0.05 or data.root=/data/faces_emore; run_dir=<existing run> "
                   "continues that run")
    return p


def config_from_args(ns: argparse.Namespace) -> tuple[Path, list[str]]:
    """(config file, overrides): key=value arguments first, then the flags, which win."""
    config, overrides = DEFAULT_CONFIG, []
    for i, arg in enumerate(ns.args):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0:
            config = Path(arg)
        else:
            raise ConfigError(f"argument {arg!r}: only the first argument may be a config file; "
                              "the others must be key=value overrides")
    for flag, key in FLAG_KEYS.items():
        value = getattr(ns, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if ns.benchmarks:
        overrides.append(f"eval.benchmarks=[{','.join(ns.benchmarks)}]")
    return config, overrides


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns = build_parser().parse_args(argv)
    try:
        config, overrides = config_from_args(ns)
        cfg = load_config(config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mode = resolve_mode(ns.cluster)
    try:
        run = prepare_run(cfg, source=str(config), allow_changes=ns.allow_changes)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {run.run_dir}", flush=True)
    ensure_data(run, evaluate=not ns.no_eval)

    def report(line: str) -> None:
        print(line, flush=True)

    tensorboard = f"tensorboard --logdir {cfg.output_root}/"
    if mode == "slurm":
        chain = submit_chain(run, evaluate=not ns.no_eval, report=report)
        print(f"follow it with: {tensorboard}   (results: {run.run_dir / 'results.csv'})", flush=True)
        if not ns.wait:
            return 0
        ok = wait_for_chain(chain, report=report)
    else:
        print(f"watch it with: {tensorboard}", flush=True)
        ok = run_local_chain(run, evaluate=not ns.no_eval, report=report) == 0
    print(f"{'finished' if ok else 'FAILED'}: {run.run_dir}" + ("" if ns.no_eval else "/results.csv"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
