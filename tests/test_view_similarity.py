"""tools/view_similarity.py: its pair statistics on embeddings whose answer is worked out by hand, and the CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qgface.config import load_config, save_config
from qgface.models.iresnet import IResNet

REPO = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("view_similarity", REPO / "tools" / "view_similarity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pair_statistics_on_known_embeddings():
    # pairs (a, b) of 2-d unit vectors; identities 0, 0, 1, 2
    emb = torch.tensor(
        [
            [[1.0, 0.0], [0.8, -0.6]],  # cos 0.8; only its own identity (pair 1, [1, 0]) is closer: masked
            [[1.0, 0.0], [1.0, 0.0]],  # cos 1
            [[0.0, 1.0], [0.0, 1.0]],  # cos 1
            [[0.6, 0.8], [0.0, -1.0]],  # cos -0.8: every other identity's view is closer
        ]
    )
    stats = load_tool().pair_statistics(emb, torch.tensor([0, 0, 1, 2]))
    assert stats["mean"] == pytest.approx(0.5)
    assert stats["p10"] == pytest.approx(-0.8 + 0.3 * 1.6)  # linear interpolation at rank 0.1 * (4 - 1)
    assert stats["closer_other"] == pytest.approx(0.25)


def test_cli_prints_both_recipes(tmp_path):
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"data.synthetic_dir={tmp_path / 'synthetic'}",
            "data.synthetic_identities=6",
            "data.synthetic_images_per_identity=3",
            "data.synthetic_eval_identities=4",
        ],
    )
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(0)
    torch.save(IResNet("ir_tiny").state_dict(), run_dir / "checkpoints" / "last.pt")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "view_similarity.py"),
            str(run_dir / "checkpoints" / "last.pt"),
            "--images",
            "12",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith(("lh ", "adaface "))]
    assert [line[0] for line in lines] == ["lh", "adaface"]
    for line in lines:
        mean, share = float(line[4].rstrip(",")), float(line[-3].rstrip("%"))
        assert -1.0 <= mean <= 1.0 and 0.0 <= share <= 100.0
    assert "12 training images" in done.stdout
