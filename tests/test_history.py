"""A continued run keeps its config.yaml honest: refused training changes, recorded allowed ones."""

from __future__ import annotations

import pytest
import torch
import yaml

from qgface.cluster import prepare_run
from qgface.config import ConfigError, load_config
from qgface.history import launched_config_file, read_history


def _trained_run(tmp_path, step: int = 40):
    run = prepare_run(load_config(None, [f"run_dir={tmp_path / 'run'}"]), source="configs/qgface.yaml")
    torch.save({"model": {}, "step": step, "epoch": 1}, run.run_dir / "checkpoints" / "last.pt")
    return run


def test_a_new_run_records_its_config_file(tmp_path):
    run = _trained_run(tmp_path)
    assert launched_config_file(run.run_dir) == "configs/qgface.yaml"
    assert [e["step"] for e in read_history(run.run_dir)] == [0]


def test_changing_what_was_trained_is_refused_and_changes_nothing(tmp_path):
    run = _trained_run(tmp_path)
    before = run.config_path.read_text()
    with pytest.raises(ConfigError) as err:
        prepare_run(load_config(None, [f"run_dir={run.run_dir}", "optim.lr=0.5", "model.backbone=ir18"]))
    assert "trained up to step 40" in str(err.value)
    assert "optim.lr: 0.1 -> 0.5" in str(err.value) and "model.backbone: 'ir50' -> 'ir18'" in str(err.value)
    assert "--allow-changes" in str(err.value)
    assert run.config_path.read_text() == before and len(read_history(run.run_dir)) == 1


def test_allowed_changes_are_recorded_with_their_step(tmp_path):
    run = _trained_run(tmp_path)
    prepare_run(load_config(None, [f"run_dir={run.run_dir}", "optim.epochs=30", "eval.benchmarks=[hq]"]))
    assert load_config(run.config_path).optim.epochs == 30
    last = read_history(run.run_dir)[-1]
    assert last["step"] == 40
    assert last["changes"] == {
        "optim.epochs": {"from": 26, "to": 30},
        "eval.benchmarks": {"from": ["hq", "crlfw", "tinyface", "scface", "ijbb", "ijbc"], "to": ["hq"]},
    }


def test_the_user_may_allow_a_training_change_and_it_is_recorded(tmp_path):
    run = _trained_run(tmp_path)
    prepare_run(load_config(None, [f"run_dir={run.run_dir}", "optim.lr=0.5"]), allow_changes=True)
    assert load_config(run.config_path).optim.lr == 0.5
    assert read_history(run.run_dir)[-1]["changes"] == {"optim.lr": {"from": 0.1, "to": 0.5}}
    assert yaml.safe_load((run.run_dir / "config_history.yaml").read_text())[-1]["step"] == 40


def test_the_same_settings_continue_without_a_new_entry(tmp_path):
    run = _trained_run(tmp_path)
    prepare_run(load_config(run.config_path))  # `python launch.py <run>/config.yaml` continues as it was
    assert len(read_history(run.run_dir)) == 1


def test_before_any_checkpoint_every_change_is_accepted(tmp_path):
    run = prepare_run(load_config(None, [f"run_dir={tmp_path / 'run'}"]))
    prepare_run(load_config(None, [f"run_dir={run.run_dir}", "optim.lr=0.5"]))
    assert read_history(run.run_dir)[-1] == {**read_history(run.run_dir)[-1], "step": 0}
    assert load_config(run.config_path).optim.lr == 0.5
