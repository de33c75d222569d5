"""GPU-facing policies that show on a CPU: deterministic mode, the SE pool, evaluation's TF32 choice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from qgface.config import load_config
from qgface.eval.embed import embed_benchmark
from qgface.models import build_backbone
from qgface.models.iresnet import SEModule
from qgface.train.determinism import CUBLAS_WORKSPACE, configure_determinism


@pytest.fixture
def restore_torch_flags():
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


def test_deterministic_mode_sets_cublas_workspace_and_the_torch_flags(restore_torch_flags):
    env: dict[str, str] = {}
    configure_determinism(True, env)
    assert env == {"CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE}
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}  # a user's own (also valid) choice is kept
    configure_determinism(True, env)
    assert env == {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    env = {}
    configure_determinism(False, env)
    assert env == {} and not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def test_se_pool_is_the_global_average_and_its_backward_runs_in_deterministic_mode(restore_torch_flags):
    se = SEModule(32)
    x = torch.randn(3, 32, 7, 5, requires_grad=True)
    pooled = nn.AdaptiveAvgPool2d(1)(x)
    want = x * se.sigmoid(se.fc2(se.relu(se.fc1(pooled))))
    torch.testing.assert_close(se(x), want)
    assert set(se.state_dict()) == {"fc1.weight", "fc2.weight"}  # AdaFace's keys: the pool holds none
    configure_determinism(True, {})
    model = build_backbone("ir_se_50")
    emb, norms = model(torch.randn(2, 3, 112, 112))
    (emb.sum() + norms.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


class _PolicyProbe(nn.Module):
    """A backbone stand-in that records the TF32 flags in effect while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.add((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision))
        f = x.mean(dim=(2, 3)) + 1.0
        norm = f.norm(dim=1, keepdim=True)
        return f / norm, norm


class _Images:
    """The few attributes ``embed_benchmark`` reads from a benchmark: 4 encoded 112x112 images."""

    name = "probe"
    image_names = [f"{i}.jpg" for i in range(4)]

    def embed_items(self):
        return [(i, None) for i in range(4)]

    def transform(self, variant, bgr):
        return bgr

    def load_bytes(self, index: int) -> bytes:
        img = np.full((112, 112, 3), 40 * index, np.uint8)
        return cv2.imencode(".png", img)[1].tobytes()


@pytest.mark.parametrize("tf32, flags", [(False, ("ieee", "ieee")), (True, ("tf32", "tf32"))])
def test_evaluation_runs_the_model_under_its_tf32_policy(tf32, flags):
    assert load_config().eval.tf32 is False  # default: CPU and GPU embeddings agree to rounding
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    probe = _PolicyProbe()
    emb, norms = embed_benchmark(probe, _Images(), batch_size=2, num_workers=0, device="cpu", tf32=tf32)
    assert probe.seen == {flags} and emb.shape == (4, 3)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
