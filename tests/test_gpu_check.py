"""tools/gpu_check.py --smoke runs every check's code path on a CPU (so the GPU version keeps working)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import qgface

REPO = Path(qgface.__file__).resolve().parents[1]


@pytest.mark.slow  # the whole check at toy sizes: ~1-2 min on two cores
def test_gpu_check_smoke_writes_one_json_with_every_check_ok(tmp_path):
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--smoke", "--workers", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {k: v.get("error") for k, v in report["checks"].items() if not v.get("ok")}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-2000:], proc.stderr[-2000:])
    assert set(report["checks"]) == {"train", "syncs", "collectives", "head", "loader", "eval", "resume"}
    train = report["checks"]["train"]
    assert train["bf16"]["loss_finite"] and train["bf16"]["source_images_per_s"] > 0
    assert report["checks"]["resume"]["state_equal"]
    assert "gpu_check on cpu" in proc.stdout
