"""Collect ``<run>/eval/<checkpoint>/<benchmark>.json`` into ``<run>/results.csv`` and TensorBoard
(docs/method.md §7, DESIGN.md); ``main`` is ``python -m qgface.aggregate``.

One CSV row per evaluated checkpoint: ``run`` (the run directory's name), ``config`` (the config file
the run was launched with, from ``config_history.yaml``), ``checkpoint, step``, the headline columns
``scface_d1, scface_d2, scface_d3, tinyface_rank1, ijbb_tar_at_1e-4, ijbc_tar_at_1e-4, hq_avg, all_avg``,
then every other metric (percentages). ``all_avg`` is the plain mean of the six columns of the paper's
table, ``scface_d1, scface_d2, scface_d3, tinyface_rank1, ijbb_tar_at_1e-4, hq_avg`` (``hq_avg`` itself
being the mean of LFW, CFP-FP, AgeDB-30, CALFW and CPLFW), and stays empty when any of them is missing;
``ijbc_tar_at_1e-4`` is shown but not averaged. TensorBoard (``<run>/tb``): scalars
``eval/<benchmark>/<metric>`` and ``eval/summary/all_avg`` at the checkpoint's step, and CMC / ROC
curves as figures.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qgface.atomic import atomic_write_text
from qgface.config import ConfigError, EvalConfig, load_config
from qgface.history import launched_config_file
from qgface.vocab.benchmarks import BENCHMARK_NAMES
from qgface.vocab.columns import ALL_AVG_PARTS, HEADLINE

__all__ = [
    "ALL_AVG_PARTS",
    "HEADLINE",
    "AggregateResult",
    "aggregate",
    "headline_table",
    "main",
    "read_csv_rows",
    "read_results",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AggregateResult:
    csv_path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    missing: list[str]
    """``<benchmark> of <checkpoint file>`` for every expected result that has no JSON"""
    failed: dict[str, str]
    """``<benchmark> of <checkpoint file>`` -> error message of its failed evaluation"""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failed


def read_results(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[tuple[str, str], str]]:
    """(successful result dicts, {(checkpoint, benchmark): error} of failed or unreadable ones) from
    every JSON under ``<run>/eval`` (``<checkpoint stem>/<benchmark>.json``)."""
    results, failed = [], {}
    for path in sorted((Path(run_dir) / "eval").rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            failed[(path.parent.name, path.stem)] = f"unreadable result file {path}: {exc}"
            continue
        if data.get("status") == "ok" and isinstance(data.get("metrics"), dict):
            results.append(data)
        else:
            key = (str(data.get("checkpoint", path.parent.name)), str(data.get("benchmark", path.stem)))
            failed[key] = str(data.get("error", f"{path} has no metrics"))
    return results, failed


def _expected(run_dir: Path) -> list[str]:
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            return list(load_config(config).eval.benchmarks)
        except ConfigError as exc:
            log.warning("%s: %s; expecting the default eval.benchmarks", config, exc)
    return list(EvalConfig().benchmarks)


def _order(name: str) -> int:
    return BENCHMARK_NAMES.index(name) if name in BENCHMARK_NAMES else len(BENCHMARK_NAMES)


def aggregate(run_dir: str | Path, *, tensorboard: bool = True) -> AggregateResult:
    """Write ``<run>/results.csv`` (atomically) and, unless disabled, the TensorBoard scalars/figures.

    ``run_dir`` must be an existing run directory: nothing is created anywhere else."""
    run_dir = Path(run_dir)
    if not (run_dir / "eval").is_dir():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory (it has no eval/ folder); give the folder "
            "launch.py printed as 'run directory'"
        )
    results, failed = read_results(run_dir)
    results.sort(key=lambda r: (_order(r["benchmark"]), r["benchmark"]))
    identity = {"run": run_dir.resolve().name, "config": launched_config_file(run_dir)}
    groups: dict[str, dict[str, Any]] = {}
    done: set[tuple[str, str]] = set()
    extra: list[str] = []
    for result in results:
        checkpoint = str(result.get("checkpoint", ""))
        row = groups.setdefault(checkpoint, {**identity, "checkpoint": checkpoint, "step": result.get("step")})
        done.add((checkpoint, result["benchmark"]))
        for metric, value in result["metrics"].items():
            row[metric] = value
            if metric not in HEADLINE and metric not in extra:
                extra.append(metric)
    rows = sorted(groups.values(), key=lambda r: (r["step"] if r["step"] is not None else -1, r["checkpoint"]))
    for row in rows:
        parts = [row.get(k) for k in ALL_AVG_PARTS]
        row["all_avg"] = sum(parts) / len(parts) if all(p is not None for p in parts) else None
    columns = ["run", "config", "checkpoint", "step", *HEADLINE, *extra]
    failed = {key: err for key, err in failed.items() if key not in done}
    evaluated = list(groups) + [ckpt for ckpt, _ in failed if ckpt not in groups]
    evaluated = list(dict.fromkeys(evaluated)) or [str(run_dir.resolve() / "checkpoints" / "last.pt")]
    missing = [
        f"{name} of {Path(ckpt).name}"
        for ckpt in evaluated
        for name in _expected(run_dir)
        if (ckpt, name) not in done and (ckpt, name) not in failed
    ]
    csv_path = run_dir / "results.csv"
    atomic_write_text(csv_path, _csv(columns, rows))
    if tensorboard:
        _write_tensorboard(run_dir / "tb", results, rows)
    failures = {f"{name} of {Path(ckpt).name}": err for (ckpt, name), err in failed.items()}
    return AggregateResult(csv_path, columns, rows, missing, failures)


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _write_tensorboard(tb_dir: Path, results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when writing

    writer = SummaryWriter(str(tb_dir))
    try:
        for result in results:
            step = result.get("step") or 0
            for metric, value in result["metrics"].items():
                if value is not None:  # an unresolvable metric (e.g. TAR at a FAR below 1/impostors)
                    writer.add_scalar(f"eval/{result['benchmark']}/{metric}", value, step)
            for name, curve in result.get("curves", {}).items():
                writer.add_figure(f"eval/{result['benchmark']}/{name}", _figure(result["benchmark"], name, curve), step)
        for row in rows:
            if row["all_avg"] is not None:
                writer.add_scalar("eval/summary/all_avg", row["all_avg"], row["step"] or 0)
    finally:
        writer.close()


def _figure(benchmark: str, name: str, curve: dict[str, list[float]]):
    """A CMC (rank vs identification rate) or ROC (FAR, log scale, vs TAR) plot; Agg canvas, no pyplot."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(4, 3), dpi=100)
    ax = fig.add_subplot()
    if "far" in curve:
        ax.semilogx(curve["far"], curve["tar"])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))  # plain text, no mathtext
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate (%)")
    else:
        ax.plot(curve["rank"], curve["identification_rate"], marker=".")
        ax.set_xlabel("rank")
        ax.set_ylabel("identification rate (%)")
    ax.set_title(f"{benchmark} {name}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def read_csv_rows(csv_path: str | Path) -> list[dict[str, str]]:
    """The rows of a results.csv as written by :func:`aggregate` (cells as text, '' = missing)."""
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def headline_table(rows: list[dict[str, Any]], label: tuple[str, ...] = ("checkpoint", "step")) -> str:
    """A Markdown table of the headline columns (the paper's, plus IJB-C) for results.csv rows:
    ``label`` columns first (a checkpoint is shown by its file name), numbers with two decimals."""

    def cell(key: str, value: Any) -> str:
        if value in (None, ""):
            return "–"
        if key == "checkpoint":
            return Path(str(value)).name
        try:
            return f"{float(value):.2f}" if key in HEADLINE else str(value)
        except ValueError:
            return str(value)

    columns = [*label, *HEADLINE]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(k, row.get(k)) for k in columns) + " |" for row in rows]
    return "\n".join(lines)


MAIN_DESCRIPTION = "results.csv + TensorBoard from RUN_DIR/eval/<checkpoint>/<benchmark>.json"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qgface.aggregate RUN_DIR``. Exits 1 naming the benchmarks that are missing or failed
    (their cells stay empty), 2 (creating nothing) when RUN_DIR is no run directory."""
    parser = argparse.ArgumentParser(prog="python -m qgface.aggregate", description=MAIN_DESCRIPTION)
    parser.add_argument("run_dir", help="the run directory (holds eval/<checkpoint>/<benchmark>.json)")
    parser.add_argument("--no-tensorboard", action="store_true", help="write only results.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = aggregate(args.run_dir, tensorboard=not args.no_tensorboard)
    except FileNotFoundError as err:
        print(f"qgface.aggregate: error: {err}", file=sys.stderr)
        return 2
    for row in result.rows:
        cells = ", ".join(f"{k}={row[k]:.2f}" for k in HEADLINE if row.get(k) is not None)
        print(f"{Path(row['checkpoint']).name} (step {row['step']}): {cells}")
    print(f"wrote {result.csv_path}")
    problems = [f"missing: {name}" for name in result.missing]
    problems += [f"failed: {name} ({error})" for name, error in result.failed.items()]
    if problems:
        print("qgface.aggregate: error: incomplete results; " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0
