"""tools/ablation.py end to end at a minimal size: every run goes through launch.py, the table is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ablation_tool_runs_the_settings_and_writes_the_paper_table(tmp_path):
    out = tmp_path / "ablation.md"
    command = [
        sys.executable, str(REPO / "tools" / "ablation.py"), "--settings", "baseline", "qgface", "--seeds", "0",
        "--study-dir", str(tmp_path / "study"), "--out", str(out), "--epochs", "1", "--steps", "2",
        "--batch-size", "8", "--identities", "20", "--images-per-identity", "4", "--eval-identities", "12",
        "--queue-size", "64", "data.num_workers=0", "eval.num_workers=0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = out.read_text()
    assert "| Baseline | flip only |" in table and "| D (QGFace) | LH pairing | yes | yes |" in table
    assert "| A |" not in table  # only the settings asked for
    header = next(line for line in table.splitlines() if line.startswith("| Setting"))
    for column in ("SCface d1", "SCface d2", "SCface d3", "TinyFace", "IJB-B", "HQ Avg", "All Avg"):
        assert column in header
    baseline_row = next(line for line in table.splitlines() if line.startswith("| Baseline"))
    cells = [cell.strip() for cell in baseline_row.strip("|").split("|")][4:]
    assert len(cells) == 7 and all(0.0 <= float(cell) <= 100.0 for cell in cells)
    assert (tmp_path / "study").is_dir() and len(list((tmp_path / "study").glob("*-seed0-*/results.csv"))) == 2

    # started again, the study reuses its finished runs; another budget in the same folder is refused
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("reusing") == 2
    assert out.read_text().split("| Setting")[1] == table.split("| Setting")[1]
    other = subprocess.run([*command, "optim.lr=0.05"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert other.returncode != 0 and "records another budget" in other.stderr
