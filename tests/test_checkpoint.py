"""Checkpoint format: weights_only loading, strict keys, RNG round trip, resume resolution."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from qgface.config import load_config
from qgface.models import CheckpointError
from qgface.train.checkpoint import (
    KEYS,
    TrainingState,
    capture_rng,
    link_or_copy,
    load_checkpoint,
    load_module_state,
    restore_rng,
    resume_path,
    save_checkpoint,
)


def _state(**changes) -> TrainingState:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = {
        "format_version": 1,
        "backbone": "ir_tiny",
        "model": model.state_dict(),
        "head": {},
        "queue": None,
        "optimizer": opt.state_dict(),
        "scheduler": {},
        "scaler": {},
        "epoch": 1,
        "step": 7,
        "batch_in_epoch": 3,
        "rng": [capture_rng()],
        "config": load_config().to_dict(),
        "finished": False,
        "validation": {"metric": "hq_avg", "value": 91.5, "step": 6},
    }
    state.update(changes)
    return TrainingState(**state)


def test_save_load_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    state = _state()
    save_checkpoint(path, state)
    raw = torch.load(path, weights_only=True)  # what any user (and eval) does
    assert sorted(raw) == sorted(KEYS)
    loaded = load_checkpoint(path)
    assert loaded.step == 7 and loaded.batch_in_epoch == 3
    assert torch.equal(loaded.model["weight"], state.model["weight"])
    assert loaded.config["model"]["backbone"] == "ir50"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_missing_and_extra_keys_are_named(tmp_path):
    path = tmp_path / "bad.pt"
    state = _state().to_dict()
    del state["scaler"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*lacks key 'scaler'"):
        load_checkpoint(path)
    torch.save({**_state().to_dict(), "extra_thing": 1}, path)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*extra_thing"):
        load_checkpoint(path)
    torch.save(_state(format_version=2).to_dict(), path)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*format_version 2"):
        load_checkpoint(path)


def test_a_checkpoint_from_before_validation_existed_still_resumes(tmp_path):
    path = tmp_path / "old.pt"
    state = _state().to_dict()
    del state["validation"]  # written by a qgface without validation during training
    torch.save(state, path)
    assert load_checkpoint(path).validation is None


def test_strict_module_load_names_file_and_key(tmp_path):
    sd = torch.nn.Linear(3, 2).state_dict()
    del sd["bias"]
    with pytest.raises(CheckpointError, match=r"x\.pt.*model\.bias"):
        load_module_state(torch.nn.Linear(3, 2), sd, tmp_path / "x.pt", "model")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_module_state(torch.nn.Linear(3, 2), torch.nn.Linear(4, 2).state_dict(), tmp_path / "x.pt", "model")


def test_rng_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = _state()  # builds a model: draws from torch's stream, so capture after it
    state.rng = [capture_rng()]
    save_checkpoint(tmp_path / "r.pt", state)
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(load_checkpoint(tmp_path / "r.pt").rng[0])
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_resume_path_modes(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    assert resume_path(cfg) is None  # auto, nothing yet
    last = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(last, _state())
    assert resume_path(cfg) == last
    assert resume_path(load_config(None, [f"run_dir={tmp_path}", "train.resume=none"])) is None
    with pytest.raises(CheckpointError, match="nope.pt"):
        resume_path(load_config(None, [f"run_dir={tmp_path}", f"train.resume={tmp_path}/nope.pt"]))


def test_epoch_copy_is_a_hard_link_that_keeps_its_content_when_last_pt_is_replaced(tmp_path):
    last, epoch = tmp_path / "last.pt", tmp_path / "epoch_1.pt"
    save_checkpoint(last, _state(step=7))
    assert link_or_copy(last, epoch) is True
    assert os.path.samefile(last, epoch)  # no second write of the bytes
    save_checkpoint(last, _state(step=8))  # atomic replace: a new inode for last.pt
    assert load_checkpoint(epoch).step == 7 and load_checkpoint(last).step == 8
    save_checkpoint(last, _state(step=9))
    assert link_or_copy(last, epoch) is True  # a later epoch of the same name replaces it atomically
    assert load_checkpoint(epoch).step == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "last.pt"]  # no temp names left


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm, a second filesystem, to refuse the link")
def test_epoch_copy_falls_back_to_a_copy_across_filesystems(tmp_path):
    other = Path("/dev/shm")
    if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip(f"{other} and {tmp_path} are on one filesystem: a link would not fail")
    source = other / f"qgface-test-{os.getpid()}-last.pt"
    try:
        save_checkpoint(source, _state(step=5))
        assert link_or_copy(source, tmp_path / "epoch_1.pt") is False  # EXDEV: copied
        assert not os.path.samefile(source, tmp_path / "epoch_1.pt")
        assert (tmp_path / "epoch_1.pt").read_bytes() == source.read_bytes()
    finally:
        source.unlink(missing_ok=True)


def test_load_maps_the_file_and_changing_a_loaded_tensor_never_changes_it(tmp_path):
    path = tmp_path / "last.pt"
    state = _state()
    save_checkpoint(path, state)
    before = path.read_bytes()
    loaded = load_checkpoint(path)
    if Path("/proc/self/maps").is_file():  # Linux: the tensors are backed by a mapping of the file
        assert str(path) in Path("/proc/self/maps").read_text()
    weight = loaded.model["weight"]
    assert torch.equal(weight, state.model["weight"])
    weight.add_(1.0)  # e.g. an optimiser updating a loaded momentum buffer in place
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path).model["weight"], state.model["weight"])
