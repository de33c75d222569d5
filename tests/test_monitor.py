"""Monitoring: TensorBoard event files read back with TensorBoard's own reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qgface.train.monitor import Monitor, ProgressReport, _span, build_monitor, norm_similarity_heatmap, pair_grid


def _read(tb_dir):
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def test_scalars_histograms_images_are_readable(tmp_path):
    mon = build_monitor(tmp_path, is_main=True)
    for step in (1, 2, 3):
        mon.log({"train/loss": 10.0 - step, "train/lr": 0.1}, step)
    mon.histogram("train/norm_L", torch.arange(10.0), 3)
    mon.image("train/pairs", np.zeros((8, 6, 3), np.uint8), 3)
    mon.close()
    mon.close()  # idempotent
    acc = _read(tmp_path / "tb")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 9.0), (2, 8.0), (3, 7.0)]
    hist = acc.Histograms("train/norm_L")[0].histogram_value
    assert hist.num == 10 and hist.min == 0.0 and hist.max == 9.0
    img = acc.Images("train/pairs")[0]
    assert (img.width, img.height) == (6, 8)


def test_resume_purges_steps_written_after_the_checkpoint(tmp_path):
    first = build_monitor(tmp_path, is_main=True)
    for step in range(1, 7):  # the job is killed after step 6; its last checkpoint was at step 4
        first.log({"train/loss": float(step)}, step)
    first.close()
    second = build_monitor(tmp_path, is_main=True, resume_step=4)
    for step in range(5, 8):
        second.log({"train/loss": 100.0 + step}, step)
    second.close()
    got = [(e.step, e.value) for e in _read(tmp_path / "tb").Scalars("train/loss")]
    assert got == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 105.0), (6, 106.0), (7, 107.0)]


def test_non_main_rank_writes_nothing(tmp_path):
    mon = build_monitor(tmp_path, is_main=False)
    assert type(mon) is Monitor
    mon.log({"train/loss": 1.0}, 1)
    mon.close()
    assert not (tmp_path / "tb").exists()


def test_pair_grid_denormalises_and_swaps_to_rgb():
    views = torch.zeros(2, 2, 3, 4, 5)
    views[:, 0, 0] = 1.0  # H view: blue channel (BGR index 0) full
    views[:, 1, 2] = 1.0  # L view: red channel (BGR index 2) full
    grid = pair_grid(views)
    assert grid.shape == (8, 10, 3) and grid.dtype == np.uint8
    # left column is L (pure red on a mid-grey background), right column H (pure blue)
    assert grid[0, 0].tolist() == [255, 128, 128]
    assert grid[0, 5].tolist() == [128, 128, 255]


def test_heatmap_is_an_rgb_image():
    img = norm_similarity_heatmap(torch.rand(64) * 30, torch.rand(64) * 2 - 1)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert img.std() > 0


def test_heatmap_axes_fit_the_data_within_the_cosine_bounds():
    cos = np.array([0.86, 0.9, 0.94])
    lo, hi = _span(cos, -1.0, 1.0)
    assert lo == pytest.approx(0.86 - 0.004) and hi == pytest.approx(0.94 + 0.004)
    assert _span(np.array([0.5, 1.0]), -1.0, 1.0)[1] == 1.0  # never past the quantity's own bound


def test_progress_line_has_step_loss_speed_and_eta():
    report = ProgressReport(total_steps=100, start_step=20)
    line = report.line(step=40, epoch=1, loss=12.3456, images_per_s=85.04, now=report.started + 50.0)
    # 20 steps in 50 s -> 60 steps left take 150 s
    assert line == "step 40/100 (40%) epoch 1 loss 12.3456 85.0 images/s ETA 2m30s"
