"""tools/ablation.py end to end at a minimal size: every run goes through launch.py, the table is written."""

from __future__ import annotations

import os
import subprocess

from ablation_command import REPO, minimal_ablation_command


def test_ablation_tool_runs_the_settings_and_writes_the_paper_table(tmp_path):
    out = tmp_path / "ablation.md"
    command = minimal_ablation_command(
        tmp_path / "study",
        out,
        overrides=(
            "train.log_every=1",
            "head.t_alpha=1.0",  # norm statistics of the batch itself: some pairs count as low quality at once
        ),
    )
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
    # the training table: the contrastive term is off for Baseline and has a gradient for D
    training = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
        for line in table.split("| Setting | first L_cls")[1].splitlines()[2:]
        if line.startswith("|")
    }
    assert set(training) == {"Baseline", "D (QGFace)"}
    assert float(training["Baseline"][0]) > 0.0 and training["Baseline"][2:] == ["n/a"] * 3
    first_cls, last_cls, last_con, active, gap = map(float, training["D (QGFace)"])
    assert first_cls > 0.0 and last_con > 0.0 and 0.0 < active <= 1.0 and -2.0 <= gap <= 2.0
    assert (tmp_path / "study").is_dir() and len(list((tmp_path / "study").glob("*-seed0-*/results.csv"))) == 2

    assert "Values are percentages, mean ± standard deviation over one seed (no deviation)." in table

    # started again, the study reuses its finished runs and keeps what was written by hand around the table;
    # another budget in the same folder is refused
    out.write_text("# My study\n\nintro\n" + table.split("\n", 1)[1] + "\n## Analysis\n\nby hand\n")
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("reusing") == 2
    rewritten = out.read_text()
    assert rewritten.startswith("# My study\n\nintro\n") and rewritten.endswith("\n## Analysis\n\nby hand\n")
    assert rewritten.split("| Setting")[1].split("<!--")[0] == table.split("| Setting")[1].split("<!--")[0]
    other = subprocess.run(
        [*command, "optim.lr=0.05"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert other.returncode != 0 and "records another budget" in other.stderr
