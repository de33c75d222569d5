"""Atomic writes give files the mode the user's umask asks for (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from qgface.atomic import atomic_open, atomic_write_text
from qgface.config import load_config, save_config


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_files_respect_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "results.csv", "a,b\n")
    save_config(load_config(), tmp_path / "config.yaml")
    with atomic_open(tmp_path / "last.pt", "wb") as f:
        torch.save({"step": 1}, f)
    for name in ("results.csv", "config.yaml", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert os.umask(mask) == mask  # the write left the umask as it was


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "x.json", "w") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
