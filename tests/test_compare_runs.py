"""tools/compare_runs.py: the headline table across runs (Markdown, CSV) and a figure; tools are executable."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest
from test_aggregate import METRICS, write_result

from qgface.eval.aggregate import aggregate

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "tools" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, name: str, tinyface: float) -> Path:
    run = tmp_path / name
    for bench in METRICS:
        write_result(
            run,
            bench,
            step=500,
            checkpoint=f"{run}/checkpoints/last.pt",
            **({"tinyface_rank1": tinyface} if bench == "tinyface" else {}),
        )
    write_result(run, "hq", step=250, checkpoint=f"{run}/checkpoints/epoch_1.pt", hq_avg=50.0)
    aggregate(run, tensorboard=False)
    return run


def test_table_csv_and_figure_across_runs(tmp_path, capsys):
    a, b = _run(tmp_path, "base", 70.0), _run(tmp_path, "qgface", 76.0)
    assert _tool().main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp.md").read_text().splitlines()
    assert md[0] == (
        "| run | config | checkpoint | step | scface_d1 | scface_d2 | scface_d3 | tinyface_rank1 | "
        "ijbb_tar_at_1e-4 | ijbc_tar_at_1e-4 | hq_avg | all_avg |"
    )
    assert len(md) == 4 and md[2].startswith("| base | – | last.pt | 500 | 60.00 |")
    with open(tmp_path / "cmp.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["base", "qgface"]  # last.pt rows only, not epoch_1.pt
    assert [float(r["tinyface_rank1"]) for r in rows] == [70.0, 76.0]
    # all_avg moves by a sixth of the TinyFace difference
    assert float(rows[1]["all_avg"]) - float(rows[0]["all_avg"]) == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| qgface |" in capsys.readouterr().out


def test_every_checkpoint_on_request_and_a_run_without_results(tmp_path, capsys):
    a = _run(tmp_path, "base", 70.0)
    tool = _tool()
    assert [r["step"] for r in tool.run_rows(a, all_checkpoints=True)] == ["250", "500"]
    assert tool.main([str(tmp_path / "nothing")]) == 2
    assert "no results.csv" in capsys.readouterr().err


def test_tools_are_executable_scripts():
    for tool in sorted((REPO / "tools").glob("*.py")):
        assert os.access(tool, os.X_OK) and tool.read_text().startswith("#!/usr/bin/env python3\n"), tool.name
