"""Collect ``<run>/eval/*.json`` into ``<run>/results.csv`` and TensorBoard (docs/method.md §7, DESIGN.md).

One CSV row per evaluated checkpoint: ``checkpoint, step``, the paper-table columns
``scface_d1, scface_d2, scface_d3, tinyface_rank1, ijbb_tar_at_1e-4, hq_avg, all_avg``, then every other
metric (percentages). ``all_avg`` is the mean of the six paper-table columns and stays empty when any
of them is missing. TensorBoard (``<run>/tb``): scalars ``eval/<benchmark>/<metric>`` and
``eval/summary/all_avg`` at the checkpoint's step, and CMC / ROC curves as figures.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any

from qgface.atomic import atomic_write_text
from qgface.config import ConfigError, EvalConfig, load_config
from qgface.eval.benchmarks import BENCHMARK_NAMES

__all__ = ["ALL_AVG_PARTS", "AggregateResult", "aggregate", "read_results"]

log = logging.getLogger(__name__)

ALL_AVG_PARTS = ("scface_d1", "scface_d2", "scface_d3", "tinyface_rank1", "ijbb_tar_at_1e-4", "hq_avg")


@dataclasses.dataclass
class AggregateResult:
    csv_path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    missing: list[str]
    """expected benchmarks without any result JSON"""
    failed: dict[str, str]
    """benchmark -> error message of its failed evaluation"""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failed


def read_results(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(successful result dicts, {benchmark: error} of failed or unreadable ones) from ``<run>/eval``."""
    results, failed = [], {}
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            failed[path.stem] = f"unreadable result file {path}: {exc}"
            continue
        if data.get("status") == "ok" and isinstance(data.get("metrics"), dict):
            results.append(data)
        else:
            failed[data.get("benchmark", path.stem)] = str(data.get("error", f"{path} has no metrics"))
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
    """Write ``<run>/results.csv`` (atomically) and, unless disabled, the TensorBoard scalars/figures."""
    run_dir = Path(run_dir)
    results, failed = read_results(run_dir)
    results.sort(key=lambda r: (_order(r["benchmark"]), r["benchmark"]))
    groups: dict[tuple[str, Any], dict[str, Any]] = {}
    extra: list[str] = []
    for result in results:
        key = (result.get("checkpoint", ""), result.get("step"))
        row = groups.setdefault(key, {"checkpoint": key[0], "step": key[1]})
        for metric, value in result["metrics"].items():
            row[metric] = value
            if metric not in ALL_AVG_PARTS and metric not in extra:
                extra.append(metric)
    rows = sorted(groups.values(), key=lambda r: (r["step"] if r["step"] is not None else -1, r["checkpoint"]))
    for row in rows:
        parts = [row.get(k) for k in ALL_AVG_PARTS]
        row["all_avg"] = sum(parts) / len(parts) if all(p is not None for p in parts) else None
    columns = ["checkpoint", "step", *ALL_AVG_PARTS, "all_avg", *extra]
    done = {r["benchmark"] for r in results}
    failed = {name: err for name, err in failed.items() if name not in done}
    missing = [name for name in _expected(run_dir) if name not in done and name not in failed]
    csv_path = run_dir / "results.csv"
    atomic_write_text(csv_path, _csv(columns, rows))
    if tensorboard:
        _write_tensorboard(run_dir / "tb", results, rows)
    return AggregateResult(csv_path, columns, rows, missing, failed)


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
