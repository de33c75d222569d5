#!/usr/bin/env python3
"""Compare runs: the paper-shaped table across runs as Markdown and CSV, plus a figure.

    .venv/bin/python tools/compare_runs.py logs/baseline-* logs/qgface-* --out docs/compare
    -> docs/compare.md, docs/compare.csv, docs/compare.png (each headline metric, one bar per run)

Each RUN is a run directory with a results.csv (``python -m qgface.aggregate RUN`` writes it). By
default a run contributes its ``last.pt`` row (else its row of the highest step); ``--all-checkpoints``
shows every evaluated checkpoint. Without ``--out`` the Markdown table is only printed.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from qgface.atomic import atomic_write_bytes, atomic_write_text
from qgface.eval.aggregate import HEADLINE, headline_table, read_csv_rows

LABEL = ("run", "config", "checkpoint", "step")


def run_rows(run_dir: Path, all_checkpoints: bool) -> list[dict[str, str]]:
    """The results.csv rows of one run that the comparison shows."""
    csv_path = run_dir / "results.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.csv; run `python -m qgface.aggregate {run_dir}` first")
    rows = read_csv_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path}: no evaluated checkpoint in it")
    if all_checkpoints:
        return rows
    last = [r for r in rows if Path(r["checkpoint"]).name == "last.pt"]
    return last[-1:] or [max(rows, key=lambda r: int(r["step"] or -1))]


def comparison_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*LABEL, *HEADLINE])
    for row in rows:
        writer.writerow([row.get(k, "") for k in (*LABEL, *HEADLINE)])
    return buffer.getvalue()


def comparison_figure(rows: list[dict[str, str]]) -> bytes:
    """PNG: one group of bars per headline metric, one bar per row (run), missing values left out."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(HEADLINE)), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    x = np.arange(len(HEADLINE))
    for i, row in enumerate(rows):
        values = [float(row[k]) if row.get(k) else np.nan for k in HEADLINE]
        name = (
            row["run"]
            if sum(r["run"] == row["run"] for r in rows) == 1
            else f"{row['run']} {Path(row['checkpoint']).name}"
        )
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=name)
    ax.set_xticks(x, HEADLINE, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories holding results.csv")
    parser.add_argument("--out", type=Path, help="write OUT.md, OUT.csv and OUT.png")
    parser.add_argument("--all-checkpoints", action="store_true", help="every evaluated checkpoint, not only last.pt")
    args = parser.parse_args(argv)
    try:
        rows = [row for run in args.runs for row in run_rows(run, args.all_checkpoints)]
    except (FileNotFoundError, ValueError) as err:
        print(f"compare_runs: error: {err}", file=sys.stderr)
        return 2
    table = headline_table(rows, label=LABEL)
    print(table)
    if args.out:
        atomic_write_text(args.out.with_suffix(".md"), table + "\n")
        atomic_write_text(args.out.with_suffix(".csv"), comparison_csv(rows))
        atomic_write_bytes(args.out.with_suffix(".png"), comparison_figure(rows))
        print(f"wrote {args.out.with_suffix('.md')}, .csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
