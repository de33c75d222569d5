"""results.csv and TensorBoard from eval JSONs (python -m qgface.aggregate)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qgface.config import load_config
from qgface.eval.aggregate import aggregate, main
from qgface.eval.run import result_path, write_failure
from qgface.history import record_config

from paper_columns import RESULTS_HEADER

CKPT = "/runs/x/checkpoints/last.pt"
METRICS = {
    "hq": {"lfw": 99.5, "lfw_std": 0.3, "cfp_fp": 98.0, "agedb_30": 97.0, "calfw": 96.0, "cplfw": 93.0, "hq_avg": 96.7},
    "crlfw": {"crlfw_8": 70.0, "crlfw_12": 80.0, "crlfw_16": 90.0, "crlfw_20": 95.0},
    "tinyface": {"tinyface_rank1": 70.0, "tinyface_rank5": 75.0, "tinyface_rank20": 80.0},
    "scface": {"scface_d1": 60.0, "scface_d2": 95.0, "scface_d3": 99.0},
    "ijbb": {f"ijbb_tar_at_1e-{k}": 90.0 + k for k in range(1, 7)},
    "ijbc": {f"ijbc_tar_at_1e-{k}": 91.0 + k for k in range(1, 7)},
}
CURVES = {
    "tinyface": {"cmc": {"rank": [1, 2, 3], "identification_rate": [70.0, 72.0, 73.0]}},
    "ijbb": {"roc": {"far": [1e-6, 1e-3, 1e-1], "tar": [80.0, 90.0, 99.0]}},
}


def write_result(run_dir: Path, name: str, step: int = 500, checkpoint: str = CKPT, **changed: float) -> None:
    path = result_path(run_dir / "eval", checkpoint, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "format_version": 1,
                "status": "ok",
                "benchmark": name,
                "metrics": {**METRICS[name], **changed},
                "curves": CURVES.get(name, {}),
                "checkpoint": checkpoint,
                "step": step,
                "sizes": {},
            }
        )
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_complete_run_gives_paper_columns_all_avg_and_scalars(tmp_path, capsys):
    for name in METRICS:
        write_result(tmp_path, name)
    assert main([str(tmp_path)]) == 0
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:12] == RESULTS_HEADER
    assert {"lfw", "lfw_std", "crlfw_8", "tinyface_rank20", "ijbc_tar_at_1e-6"} <= set(header[12:])
    (row,) = read_csv(tmp_path / "results.csv")
    expected_avg = (60 + 95 + 99 + 70 + 94 + 96.7) / 6  # ijbc (95) is shown, not averaged
    assert row["checkpoint"] == CKPT and row["step"] == "500" and float(row["ijbc_tar_at_1e-4"]) == 95.0
    assert row["run"] == tmp_path.name and row["config"] == ""
    assert float(row["all_avg"]) == pytest.approx(expected_avg, abs=1e-4)
    assert float(row["ijbb_tar_at_1e-4"]) == 94.0 and float(row["lfw"]) == 99.5
    assert "all_avg" in capsys.readouterr().out

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    scalar = events.Scalars("eval/scface/scface_d1")
    assert [(s.step, s.value) for s in scalar] == [(500, 60.0)]
    assert events.Scalars("eval/summary/all_avg")[0].value == pytest.approx(expected_avg, rel=1e-6)
    assert "eval/ijbb/ijbb_tar_at_1e-4" in tags["scalars"]
    assert {"eval/tinyface/cmc", "eval/ijbb/roc"} <= set(tags["images"])
    assert events.Images("eval/ijbb/roc")[0].step == 500


def test_missing_and_failed_benchmarks_leave_empty_cells_and_fail(tmp_path, capsys):
    for name in ("hq", "tinyface", "scface", "crlfw"):
        write_result(tmp_path, name)
    write_failure(tmp_path / "eval", "ijbc", CKPT, "BenchmarkError: IJBC/meta missing")
    assert main([str(tmp_path), "--no-tensorboard"]) == 1
    err = capsys.readouterr().err
    assert "missing: ijbb of last.pt" in err and "failed: ijbc of last.pt (BenchmarkError: IJBC/meta missing)" in err
    (row,) = read_csv(tmp_path / "results.csv")
    assert row["ijbb_tar_at_1e-4"] == "" and row["all_avg"] == ""
    assert float(row["scface_d2"]) == 95.0
    assert not (tmp_path / "tb").exists()


def test_expected_benchmarks_come_from_the_run_config(tmp_path):
    (tmp_path / "config.yaml").write_text("eval:\n  benchmarks: [hq, scface]\n")
    write_result(tmp_path, "hq")
    write_result(tmp_path, "scface")
    result = aggregate(tmp_path, tensorboard=False)
    assert result.ok and result.rows[0]["all_avg"] is None  # all_avg needs tinyface and ijbb too


def test_each_checkpoint_gets_its_own_row(tmp_path):
    write_result(tmp_path, "hq", step=100, checkpoint="/runs/x/checkpoints/epoch_1.pt")
    write_result(tmp_path, "scface", step=200)
    result = aggregate(tmp_path, tensorboard=False)
    assert [r["step"] for r in result.rows] == [100, 200]
    rows = read_csv(tmp_path / "results.csv")
    assert rows[0]["hq_avg"] == "96.7000" and rows[0]["scface_d1"] == ""
    assert rows[1]["scface_d1"] == "60.0000" and rows[1]["hq_avg"] == ""


def test_another_checkpoints_result_replaces_nothing(tmp_path):
    """Evaluating epoch_1.pt after last.pt keeps both results: one row each, last.pt's all_avg intact."""
    for name in METRICS:
        write_result(tmp_path, name)
    write_result(tmp_path, "tinyface", step=250, checkpoint="/runs/x/checkpoints/epoch_1.pt", tinyface_rank1=10.0)
    assert sorted(p.relative_to(tmp_path / "eval").as_posix() for p in (tmp_path / "eval").rglob("tinyface.json")) == [
        "epoch_1/tinyface.json",
        "last/tinyface.json",
    ]
    result = aggregate(tmp_path, tensorboard=False)
    rows = read_csv(tmp_path / "results.csv")
    assert [r["checkpoint"] for r in rows] == ["/runs/x/checkpoints/epoch_1.pt", CKPT]
    assert float(rows[0]["tinyface_rank1"]) == 10.0 and rows[0]["all_avg"] == ""
    assert float(rows[1]["tinyface_rank1"]) == 70.0
    assert float(rows[1]["all_avg"]) == pytest.approx((60 + 95 + 99 + 70 + 94 + 96.7) / 6, abs=1e-4)
    assert "scface of epoch_1.pt" in result.missing and not any("last.pt" in m for m in result.missing)


def test_config_column_names_the_launched_file(tmp_path):
    record_config(tmp_path, load_config(None, [f"run_dir={tmp_path}"]), 0, source="configs/ablation_b.yaml")
    write_result(tmp_path, "hq")
    (row,) = read_csv(aggregate(tmp_path, tensorboard=False).csv_path)
    assert row["config"] == "configs/ablation_b.yaml" and row["run"] == tmp_path.name


def test_a_path_that_is_no_run_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "run"
    assert main([str(missing)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
