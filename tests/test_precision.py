"""Training precision (train.precision) and the TF32 policy context (docs/method.md §5)."""

from __future__ import annotations

import pytest
import torch

from qgface.config import ConfigError, load_config
from qgface.tf32 import tf32_policy
from qgface.train.precision import build_autocast, build_scaler, precision_for_capability, resolve_precision


@pytest.mark.parametrize(
    "capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_is_bf16_from_compute_capability_8_else_fp16(capability, expected):
    assert precision_for_capability("auto", capability) == expected


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp32"])
def test_an_explicit_precision_is_kept_on_any_gpu(name):
    assert precision_for_capability(name, (7, 0)) == name
    assert precision_for_capability(name, (9, 0)) == name


def test_cpu_always_trains_in_fp32_with_no_scaling():
    cpu = torch.device("cpu")
    for name in ("auto", "bf16", "fp16", "fp32"):
        assert resolve_precision(name, cpu) == "fp32"
    assert not build_scaler("fp32", cpu).is_enabled()
    x = torch.randn(4, 4)
    with build_autocast("fp32", cpu):
        assert (x @ x).dtype == torch.float32


def test_fp16_scales_the_loss_and_bf16_does_not():
    # the scaler's behaviour is device independent; CPU GradScaler exists in torch >= 2.3
    cpu = torch.device("cpu")
    assert build_scaler("fp16", cpu).is_enabled()
    assert not build_scaler("bf16", cpu).is_enabled()
    with build_autocast("bf16", cpu):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16


def test_auto_is_the_default_and_bad_names_are_refused():
    assert load_config().train.precision == "auto"
    with pytest.raises(ConfigError, match="train.precision must be one of auto, bf16, fp16, fp32"):
        load_config(overrides=["train.precision=fp8"])


def test_tf32_policy_sets_and_restores_both_flags():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    with tf32_policy(matmul=False, conv=False):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        with tf32_policy(matmul=True):
            assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "ieee")
        assert matmul.fp32_precision == "ieee"
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    with pytest.raises(RuntimeError), tf32_policy(conv=True):
        raise RuntimeError("the flags are restored on errors too")
    assert (matmul.fp32_precision, conv.fp32_precision) == before
