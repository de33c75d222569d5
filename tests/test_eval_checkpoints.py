"""Which checkpoints a run's evaluation scores (eval.checkpoints), and where their results go."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qgface.config import ConfigError, load_config
from qgface.eval.__main__ import main as eval_main
from qgface.eval.run import checkpoints_to_evaluate, result_path


def _run(tmp_path: Path, steps: dict[str, int]) -> Path:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder.parent / "config.yaml").write_text("{}\n")
    for name, step in steps.items():
        torch.save({"model": {}, "step": step, "epoch": 0}, folder / name)
    return folder.parent


def test_last_all_and_lists(tmp_path):
    run = _run(tmp_path, {"epoch_1.pt": 3, "epoch_2.pt": 6, "epoch_10.pt": 30, "last.pt": 30})
    ckpts = run / "checkpoints"
    assert checkpoints_to_evaluate(run, "last") == [ckpts / "last.pt"]
    # epoch order (10 after 2), and last.pt left out: it is epoch_10.pt's state
    assert checkpoints_to_evaluate(run, "all") == [ckpts / "epoch_1.pt", ckpts / "epoch_2.pt", ckpts / "epoch_10.pt"]
    assert checkpoints_to_evaluate(run, "epoch_2.pt, last.pt") == [ckpts / "epoch_2.pt", ckpts / "last.pt"]
    with pytest.raises(FileNotFoundError, match="epoch_3.pt does not exist"):
        checkpoints_to_evaluate(run, "epoch_3.pt")


def test_all_keeps_last_pt_saved_between_epochs(tmp_path):
    run = _run(tmp_path, {"epoch_1.pt": 3, "last.pt": 5})  # max_steps stopped training inside epoch 2
    assert [p.name for p in checkpoints_to_evaluate(run, "all")] == ["epoch_1.pt", "last.pt"]


def test_config_refuses_other_values():
    assert load_config(None, ["eval.checkpoints=all"]).eval.checkpoints == "all"
    with pytest.raises(ConfigError, match="eval.checkpoints must be last, all, best or comma-separated"):
        load_config(None, ["eval.checkpoints=every"])


def test_results_are_kept_per_checkpoint_and_benchmark(tmp_path):
    assert result_path(tmp_path, "/r/checkpoints/epoch_1.pt", "hq") == tmp_path / "epoch_1" / "hq.json"
    assert result_path(tmp_path, "/r/checkpoints/last.pt", "hq") == tmp_path / "last" / "hq.json"


def test_a_checkpoint_outside_a_run_needs_an_output_dir_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "model.pt"
    torch.save({"model": {}, "step": 1}, ckpt)
    assert eval_main(["--checkpoint", str(ckpt), "--benchmark", "hq"]) == 1
    assert "is not in a run's checkpoints/ folder; give --output-dir" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
