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
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    ("Baseline", "baseline", "flip only", "-", "-"),
    ("A", "ablation_a", "AdaFace", "-", "-"),
    ("B", "ablation_b", "AdaFace", "yes", "-"),
    ("C", "ablation_c", "AdaFace", "yes", "yes"),
    ("D (QGFace)", "qgface", "LH pairing", "yes", "yes"),
]
COLUMNS = [
    ("SCface d1", "scface_d1"),
    ("SCface d2", "scface_d2"),
    ("SCface d3", "scface_d3"),
    ("TinyFace", "tinyface_rank1"),
    ("IJB-B", "ijbb_tar_at_1e-4"),
    ("HQ Avg", "hq_avg"),
    ("All Avg", "all_avg"),
]
BENCHMARKS = ["hq", "tinyface", "scface", "ijbb"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per setting")
    parser.add_argument("--settings", nargs="+", default=[s[1] for s in SETTINGS],
                        help="config names under configs/ to run (default: all five)")
    parser.add_argument("--study-dir", type=Path, default=REPO / "logs" / "ablation",
                        help="folder for the runs and the shared synthetic data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ablation.md", help="the Markdown table")
    parser.add_argument("--cluster", choices=["local", "slurm"], default="local", help="where the runs execute")
    parser.add_argument("--backbone", default="ir_tiny", help="backbone of every setting")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every setting")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per epoch of every setting")
    parser.add_argument("--batch-size", type=int, default=32, help="source images per step")
    parser.add_argument("--identities", type=int, default=300, help="training identities of the synthetic set")
    parser.add_argument("--images-per-identity", type=int, default=20, help="images per training identity")
    parser.add_argument("--eval-identities", type=int, default=100, help="identities per synthetic benchmark")
    parser.add_argument("--queue-size", type=int, default=2048, help="contrastive queue size K (C and D)")
    parser.add_argument("overrides", nargs="*", help="further key=value overrides applied to every run")
    return parser.parse_args()


def budget_overrides(args: argparse.Namespace) -> list[str]:
    """The identical budget every setting trains under."""
    last = args.epochs
    milestones = sorted({max(1, round(last * f)) for f in (0.5, 0.75)} - {last})
    return [
        f"output_root={args.study_dir}",
        f"data.synthetic_dir={args.study_dir / 'synthetic'}",
        f"data.synthetic_identities={args.identities}",
        f"data.synthetic_images_per_identity={args.images_per_identity}",
        f"data.synthetic_eval_identities={args.eval_identities}",
        f"data.batch_size={args.batch_size}",
        f"model.backbone={args.backbone}",
        f"optim.epochs={args.epochs}",
        f"optim.milestones={milestones}".replace(" ", ""),
        f"train.steps_per_epoch={args.steps}",
        f"contrast.queue_size={args.queue_size}",
        *args.overrides,
    ]


def check_study_budget(args: argparse.Namespace) -> None:
    """A study folder holds runs of one budget only: finished runs are reused, so budgets must not mix."""
    record = args.study_dir / "study.json"
    budget = {"backbone": args.backbone, "overrides": budget_overrides(args)}
    if record.exists():
        if json.loads(record.read_text()) != budget:
            raise SystemExit(f"{record} records another budget than this command's; use another --study-dir "
                             f"or delete {args.study_dir}")
        return
    args.study_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(budget, indent=1))


def finished_run(name: str, args: argparse.Namespace) -> Path | None:
    runs = sorted(args.study_dir.glob(f"{name}-*/results.csv"))
    return runs[-1] if runs else None


def run_setting(config: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Run one setting and seed through launch.py (unless the study already has it); return its results row."""
    name = f"{config}-seed{seed}"
    if (done := finished_run(name, args)) is not None:
        print(f"{name}: reusing {done}", flush=True)
        return read_row(done)
    command = [
        sys.executable, str(REPO / "launch.py"), "--cluster", args.cluster, "--name", name,
        "--benchmarks", *BENCHMARKS, "--", str(REPO / "configs" / f"{config}.yaml"),
        f"seed={seed}", *budget_overrides(args),
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    if (done := finished_run(name, args)) is None:
        raise RuntimeError(f"{name}: launch.py finished but wrote no results.csv under {args.study_dir}")
    return read_row(done)


def read_row(results_csv: Path) -> dict[str, float]:
    with results_csv.open() as f:
        row = list(csv.DictReader(f))[-1]
    return {key: float(row[key]) for _, key in COLUMNS if row.get(key)}


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_table(results: dict[str, list[dict[str, float]]], args: argparse.Namespace, minutes: float) -> None:
    lines = [
        "| Setting | Augmentation | QS | CL | " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|---" * (4 + len(COLUMNS)) + "|",
    ]
    for label, config, augmentation, qs, cl in SETTINGS:
        if config not in results:
            continue
        cells = [mean_std([run[key] for run in results[config] if key in run]) for _, key in COLUMNS]
        lines.append(f"| {label} | {augmentation} | {qs} | {cl} | " + " | ".join(cells) + " |")
    command = "python tools/ablation.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# Ablation on the synthetic mixed-quality benchmark",
        "",
        f"Command: `{command}` ({minutes:.0f} minutes on this machine).",
        "",
        f"Budget, identical for every setting: backbone `{args.backbone}`, {args.epochs} epochs x {args.steps} steps,"
        f" batch {args.batch_size} source images, queue K = {args.queue_size} (C, D);"
        f" synthetic training set {args.identities} identities x {args.images_per_identity} images,"
        f" {args.eval_identities} identities per benchmark; seeds {', '.join(map(str, args.seeds))}.",
        "Values are percentages, mean ± standard deviation over the seeds.",
        "",
        *lines,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def main() -> None:
    args = parse_args()
    started = time.time()
    check_study_budget(args)
    results: dict[str, list[dict[str, float]]] = {}
    # seeds outside, settings inside: an interrupted study has compared every setting on its first seeds;
    # started again with the same command it reuses the finished runs and continues
    for seed in args.seeds:
        for config in args.settings:
            results.setdefault(config, []).append(run_setting(config, seed, args))
            write_table(results, args, (time.time() - started) / 60)  # after every run: a partial study is kept


if __name__ == "__main__":
    main()
