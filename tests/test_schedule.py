"""Schedules of the joint objective as pure functions of the epoch (docs/method.md §3, §5)."""

from __future__ import annotations

import pytest
import torch

from qgface.config import load_config
from qgface.train.schedule import contrast_weight_at, lr_multiplier, quality_scale_at, queue_size_at


def test_lr_multiplier_matches_torch_multisteplr():
    milestones, gamma = [12, 20, 24], 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    for epoch in range(26):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_multiplier(epoch, milestones, gamma))
        opt.step()
        sched.step()
    assert lr_multiplier(11, milestones, gamma) == 1.0
    assert lr_multiplier(12, milestones, gamma) == pytest.approx(0.1)
    assert lr_multiplier(25, milestones, gamma) == pytest.approx(1e-3)


def test_quality_scale_warmup_ramps_linearly_to_its_value():
    cfg = load_config(None, ["head.quality_scale=0.4", "head.quality_scale_warmup=true", "contrast.joint_point=4"])
    assert [quality_scale_at(e, cfg) for e in range(6)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    no_warmup = load_config(None, ["head.quality_scale=0.4", "contrast.joint_point=4"])
    assert quality_scale_at(0, no_warmup) == 0.4
    no_ramp = load_config(None, ["head.quality_scale=0.4", "head.quality_scale_warmup=true"])
    assert quality_scale_at(0, no_ramp) == 0.4


def test_contrast_weight_later_joint_disabled_and_single_view():
    cfg = load_config(None, ["contrast.weight=0.5", "contrast.later_joint=true", "contrast.joint_point=3"])
    assert [contrast_weight_at(e, cfg, num_views=2) for e in range(5)] == [0, 0, 0, 0.5, 0.5]
    assert contrast_weight_at(10, cfg, num_views=1) == 0.0
    off = load_config(None, ["contrast.enabled=false"])
    assert contrast_weight_at(10, off, num_views=2) == 0.0
    always = load_config(None, ["contrast.joint_point=3"])  # joint_point alone does not delay the loss
    assert contrast_weight_at(0, always, num_views=2) == 1.0


def test_queue_size_progressive_from_world_batch_to_k():
    cfg = load_config(
        None, ["contrast.queue_size=1000", "contrast.progressive=true", "contrast.joint_point=2", "optim.epochs=7"]
    )
    # world batch 100: 100 up to the joint point, then +225 per epoch to reach K in the last epoch (6)
    assert [queue_size_at(e, cfg, 100) for e in range(8)] == [100, 100, 100, 325, 550, 775, 1000, 1000]
    assert queue_size_at(0, cfg, 5000) == 1000  # a world batch larger than K starts (and stays) at K
    fixed = load_config(None, ["contrast.queue_size=1000"])
    assert queue_size_at(0, fixed, 100) == 1000


def test_automatic_queue_size_keeps_steps_of_history_at_any_scale():
    auto = load_config(None, [])  # contrast.queue_size=0, contrast.queue_steps=8
    assert queue_size_at(0, auto, 2 * 64) == 16384  # one GPU at batch 64: the published K (128 steps)
    assert queue_size_at(0, auto, 2 * 512 * 16) == 8 * 16384  # 2 nodes x 8 GPUs x 512 x 2 views
    assert queue_size_at(0, auto, 2 * 512 * 32) == 8 * 32768  # 32 GPUs: still 8 steps, never refused
    assert queue_size_at(0, load_config(None, ["contrast.queue_steps=3"]), 10000) == 30000
    progressive = load_config(None, ["contrast.progressive=true", "contrast.joint_point=0", "optim.epochs=3"])
    assert [queue_size_at(e, progressive, 32768) for e in range(3)] == [32768, 147456, 262144]
