#!/usr/bin/env python3
"""Reproduce the paper's ablation table (Baseline, A, B, C, D) at small scale on the synthetic data.

Every setting gets the same budget (backbone, steps, batch, data) and several seeds; each run goes
through the normal pipeline (`launch.py`: train -> compress + evaluate every benchmark -> aggregate),
locally or on Slurm. The table (mean ± std over seeds) is written to a Markdown file.

    python tools/ablation.py --seeds 0 1 2 --out docs/ablation.md            # ~1 hour on 2 CPU cores
    python tools/ablation.py --seeds 0 --steps 4 --out /tmp/ablation.md ...   # a smoke run

Runs that finished are reused when the same command is started again, so a study survives interruption.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qgface.atomic import atomic_write_text
from qgface.vocab import synthetic
from qgface.vocab.columns import PAPER_BENCHMARKS, PAPER_COLUMNS

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    ("Baseline", "baseline", "flip only", "-", "-"),
    ("A", "ablation_a", "AdaFace", "-", "-"),
    ("B", "ablation_b", "AdaFace", "yes", "-"),
    ("C", "ablation_c", "AdaFace", "yes", "yes"),
    ("D (QGFace)", "qgface", "LH pairing", "yes", "yes"),
]
TRAINING_COLUMNS = [
    ("first L_cls", "first:train/loss_cls"),
    ("last L_cls", "last:train/loss_cls"),
    ("last L_con", "last:train/loss_con"),
    ("CL active (mean)", "mean:train/contrast_active_fraction"),
    ("pos - hardest neg (mean)", "mean:train/dynamic_margin"),
]
"""what training did, from each run's TensorBoard scalars: is the contrastive term on, does L_cls fall"""
CONTRAST_TAGS = {"train/loss_con", "train/contrast_active_fraction", "train/dynamic_margin"}
BEGIN = "<!-- written by tools/ablation.py from here -->"
END = "<!-- to here; text outside these two lines is kept when the table is rewritten -->"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per setting")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[s[1] for s in SETTINGS],
        help="config names under configs/ to run (default: all five)",
    )
    parser.add_argument(
        "--study-dir",
        type=Path,
        default=REPO / "logs" / "ablation",
        help="folder for the runs and the shared synthetic data",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ablation.md", help="the Markdown table")
    parser.add_argument("--cluster", choices=["local", "slurm"], default="local", help="where the runs execute")
    parser.add_argument("--backbone", default="ir_tiny", help="backbone of every setting")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every setting")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per epoch of every setting")
    parser.add_argument("--batch-size", type=int, default=32, help="source images per step")
    parser.add_argument(
        "--identities", type=int, default=synthetic.IDENTITIES, help="training identities of the synthetic set"
    )
    parser.add_argument(
        "--images-per-identity", type=int, default=synthetic.IMAGES_PER_IDENTITY, help="images per training identity"
    )
    parser.add_argument(
        "--eval-identities", type=int, default=synthetic.EVAL_IDENTITIES, help="identities per synthetic benchmark"
    )
    parser.add_argument("--queue-size", type=int, default=2048, help="contrastive queue size K (C and D)")
    parser.add_argument("overrides", nargs="*", help="further key=value overrides applied to every run")
    return parser.parse_args()


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every setting trains under, identical across the study."""

    backbone: str
    epochs: int
    steps: int
    batch_size: int
    identities: int
    images_per_identity: int
    eval_identities: int
    queue_size: int
    extra: tuple[str, ...]
    """further key=value overrides of the command line"""

    def overrides(self, study_dir: Path) -> list[str]:
        """The launch.py overrides of this budget, data and runs under ``study_dir``."""
        milestones = sorted({max(1, round(self.epochs * f)) for f in (0.5, 0.75)} - {self.epochs})
        return [
            f"output_root={study_dir}",
            f"data.synthetic_dir={study_dir / 'synthetic'}",
            f"data.synthetic_identities={self.identities}",
            f"data.synthetic_images_per_identity={self.images_per_identity}",
            f"data.synthetic_eval_identities={self.eval_identities}",
            f"data.batch_size={self.batch_size}",
            f"model.backbone={self.backbone}",
            f"optim.epochs={self.epochs}",
            f"optim.milestones={milestones}".replace(" ", ""),
            f"train.steps_per_epoch={self.steps}",
            f"contrast.queue_size={self.queue_size}",
            *self.extra,
        ]

    def describe(self) -> str:
        return (
            f"Budget, identical for every setting: backbone `{self.backbone}`, {self.epochs} epochs x {self.steps}"
            f" steps, batch {self.batch_size} source images, queue K = {self.queue_size} (C, D);"
            f" synthetic training set {self.identities} identities x {self.images_per_identity} images,"
            f" {self.eval_identities} identities per benchmark"
        )


@dataclasses.dataclass(frozen=True)
class Study:
    """Where the runs of one budget live, where they execute, and which settings and seeds they cover."""

    study_dir: Path
    cluster: str
    budget: Budget
    settings: tuple[str, ...]
    seeds: tuple[int, ...]

    def check_budget(self) -> None:
        """A study folder holds runs of one budget only: finished runs are reused, so budgets must not mix."""
        record = self.study_dir / "study.json"
        budget = {"backbone": self.budget.backbone, "overrides": self.budget.overrides(self.study_dir)}
        if record.exists():
            if json.loads(record.read_text()) != budget:
                raise SystemExit(
                    f"{record} records another budget than this command's; use another --study-dir "
                    f"or delete {self.study_dir}"
                )
            return
        self.study_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(budget, indent=1))

    def finished_run(self, name: str) -> Path | None:
        runs = sorted(self.study_dir.glob(f"{name}-*/results.csv"))
        return runs[-1] if runs else None

    def launch_command(self, config: str, seed: int) -> list[str]:
        """launch.py for one setting and seed; ``--wait`` makes a Slurm submission return only at its end."""
        flags = [
            "--cluster",
            self.cluster,
            "--wait",
            "--name",
            f"{config}-seed{seed}",
            "--benchmarks",
            *PAPER_BENCHMARKS,
        ]
        config_file = str(REPO / "configs" / f"{config}.yaml")
        return [
            sys.executable,
            str(REPO / "launch.py"),
            *flags,
            "--",
            config_file,
            f"seed={seed}",
            *self.budget.overrides(self.study_dir),
        ]

    def run_setting(self, config: str, seed: int) -> dict[str, float]:
        """Run one setting and seed through launch.py (unless the study already has it); return its results row."""
        name = f"{config}-seed{seed}"
        if (done := self.finished_run(name)) is not None:
            print(f"{name}: reusing {done}", flush=True)
            return read_row(done)
        command = self.launch_command(config, seed)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True, cwd=REPO)
        if (done := self.finished_run(name)) is None:
            raise RuntimeError(f"{name}: launch.py finished but wrote no results.csv under {self.study_dir}")
        return read_row(done)

    def submit_all(self, runs: list[tuple[int, str]]) -> None:
        """On Slurm, every missing run at once: one ``launch.py --wait`` each, its output in <study>/<name>.log."""
        pending = [(seed, config) for seed, config in runs if self.finished_run(f"{config}-seed{seed}") is None]
        procs = []
        for seed, config in pending:
            log_path = self.study_dir / f"{config}-seed{seed}.log"
            with log_path.open("w") as log:
                command = self.launch_command(config, seed)
                procs.append((log_path, subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)))
            print(f"[{time.strftime('%H:%M:%S')}] {config}-seed{seed}: submitted (log {log_path})", flush=True)
        failed = [str(log_path) for log_path, proc in procs if proc.wait() != 0]
        if failed:
            raise SystemExit(
                f"{len(failed)} of {len(procs)} runs failed; see {', '.join(failed)}. Started again, "
                "the study reuses the runs that finished and resubmits the others."
            )


def read_row(results_csv: Path) -> dict[str, float]:
    """The table's values of one run, and its wall time in minutes (run directory stamp -> results.csv)."""
    with results_csv.open() as f:
        row = list(csv.DictReader(f))[-1]
    values = {key: float(row[key]) for _, key in PAPER_COLUMNS if row.get(key)}
    values.update(training_summary(results_csv.parent / "tb"))
    stamp = re.search(r"-(\d{8}-\d{6})", results_csv.parent.name)
    if stamp:
        started = datetime.datetime.strptime(stamp.group(1), "%Y%m%d-%H%M%S").timestamp()
        values["minutes"] = (results_csv.stat().st_mtime - started) / 60
    return values


def training_summary(tb_dir: Path) -> dict[str, float]:
    """First, last and mean of the logged training scalars that TRAINING_COLUMNS shows. The contrastive
    ones count only the logged steps where the term was on (``later_joint`` keeps it off at first), and
    are left out (n/a in the table, not a misleading 0) for a run that never had it."""
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}).Reload()
    tags = set(accumulator.Tags()["scalars"])
    weight_events = accumulator.Scalars("train/contrast_weight") if "train/contrast_weight" in tags else []
    weight = {e.step: e.value for e in weight_events}
    summary = {}
    for _, key in TRAINING_COLUMNS:
        how, tag = key.split(":", 1)
        if tag not in tags:
            continue
        values = [e.value for e in accumulator.Scalars(tag) if tag not in CONTRAST_TAGS or weight.get(e.step, 0) > 0]
        if values:
            summary[key] = {"first": values[0], "last": values[-1], "mean": statistics.mean(values)}[how]
    return summary


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


TRAINING_NOTE = (
    "Training, from each run's TensorBoard scalars (mean ± std over the same seeds): the classification loss"
    " at the first and last logged step, the contrastive loss at the last one, the fraction of pairs"
    " whose contrastive term has a gradient (`train/contrast_active_fraction`) averaged over the logged"
    " steps, and the moving average of the positive cosine minus the hardest negative cosine of the"
    " contrastive rows (`train/dynamic_margin`; below 0: the partner view is farther than some other"
    " identity), averaged over the logged steps too."
)


def write_table(results: dict[str, list[dict[str, float]]], study: Study, out: Path, command: str) -> None:
    """The study's part of the Markdown file: command, budget, the paper's table, the training table."""
    generated = "\n".join(
        [
            *study_header(results, study, command),
            "",
            *markdown_table(results, ["Setting", "Augmentation", "QS", "CL"], PAPER_COLUMNS, with_flags=True),
            "",
            TRAINING_NOTE,
            "",
            *markdown_table(results, ["Setting"], TRAINING_COLUMNS, with_flags=False),
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, with_generated_part(out, generated))
    print(generated, flush=True)


def study_header(results: dict[str, list[dict[str, float]]], study: Study, command: str) -> list[str]:
    minutes = [run["minutes"] for runs in results.values() for run in runs if "minutes" in run]
    timing = ""
    if minutes:
        timing = (
            f" Each run took {statistics.mean(minutes):.1f} minutes on average ({sum(minutes):.0f} minutes"
            f" for the {len(minutes)} runs) on the machine that ran it."
        )
    if {len(runs) for runs in results.values()} == {len(study.seeds)} and len(results) == len(study.settings):
        over = f"the {len(study.seeds)} seeds" if len(study.seeds) > 1 else "one seed (no deviation)"
    else:
        done = ", ".join(
            f"{label} {len(results.get(config, []))}" for label, config, *_ in SETTINGS if config in study.settings
        )
        over = f"the seeds that finished (**partial study**, runs per setting: {done})"
    return [
        f"Command: `{command}`.{timing}",
        "",
        f"{study.budget.describe()}; seeds {', '.join(map(str, study.seeds))}.",
        f"Values are percentages, mean ± standard deviation over {over}.",
    ]


def markdown_table(
    results: dict[str, list[dict[str, float]]],
    first: list[str],
    columns: Sequence[tuple[str, str]],
    *,
    with_flags: bool,
) -> list[str]:
    """One row per setting that ran: its label (and views/QS/CL flags), then mean ± std of each column."""
    header = "| " + " | ".join(first + [title for title, _ in columns]) + " |"
    lines = [header, "|---" * (len(first) + len(columns)) + "|"]
    for label, config, *flags in SETTINGS:
        if config in results:
            cells = [mean_std([run[key] for run in results[config] if key in run]) for _, key in columns]
            lines.append("| " + " | ".join([label, *(flags if with_flags else []), *cells]) + " |")
    return lines


def with_generated_part(out: Path, generated: str) -> str:
    """The Markdown file with its generated part replaced; what was written by hand around it is kept."""
    part = f"{BEGIN}\n{generated}\n{END}"
    if out.exists() and BEGIN in (old := out.read_text()) and END in old:
        before, rest = old.split(BEGIN, 1)
        return before + part + rest.split(END, 1)[1]
    return f"# Ablation on the synthetic mixed-quality benchmark\n\n{part}\n"


def main() -> None:
    args = parse_args()
    budget = Budget(
        args.backbone,
        args.epochs,
        args.steps,
        args.batch_size,
        args.identities,
        args.images_per_identity,
        args.eval_identities,
        args.queue_size,
        tuple(args.overrides),
    )
    study = Study(args.study_dir, args.cluster, budget, tuple(args.settings), tuple(args.seeds))
    study.check_budget()
    # seeds outside, settings inside: an interrupted study has compared every setting on its first seeds;
    # started again with the same command it reuses the finished runs and continues
    runs = [(seed, config) for seed in study.seeds for config in study.settings]
    if study.cluster == "slurm":
        study.submit_all(runs)
    command = "python tools/ablation.py " + " ".join(sys.argv[1:])
    results: dict[str, list[dict[str, float]]] = {}
    for seed, config in runs:
        results.setdefault(config, []).append(study.run_setting(config, seed))
        write_table(results, study, args.out, command)  # after every run: a partial study is kept


if __name__ == "__main__":
    main()
