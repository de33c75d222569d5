"""Margin heads with the quality scaler (docs/method.md §3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from qgface.losses import MarginHead

EPS = 1e-3
KINDS = ("adaface", "arcface", "cosface")


def dense_loss(head: MarginHead, e: torch.Tensor, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """docs/method.md §3 written the plain way: one-hot, acos/cos over the whole matrix."""
    w = F.normalize(head.kernel, dim=0)
    cos = (e @ w).clamp(-1 + EPS, 1 - EPS)
    onehot = F.one_hot(y, w.shape[1]).to(e.dtype)
    theta = torch.acos(cos)
    if head.kind == "adaface":
        target = torch.cos((theta - head.m * g).clamp(EPS, math.pi - EPS)) - (head.m + head.m * g)
    elif head.kind == "arcface":
        target = torch.cos((theta + head.m).clamp(EPS, math.pi - EPS))
    else:
        target = cos - head.m
    z = head.s * (onehot * target + (1 - onehot) * cos)
    if head.quality_scale != 0:
        z = z * torch.sigmoid(head.s * (g + 2 * (0.5 - head.quality_scale)))
    return F.cross_entropy(z, y)


def _head(kind: str, classes: int = 37, dim: int = 16, qs: float = 0.0, chunk_elems: int = 1 << 24) -> MarginHead:
    head = MarginHead(kind, classes, dim, quality_scale=qs, chunk_elems=chunk_elems).double().eval()
    head.batch_mean.fill_(5.0)
    head.batch_std.fill_(2.0)
    return head


def _batch(n: int = 12, dim: int = 16, classes: int = 37, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    norms = torch.rand(n, 1, generator=g, dtype=torch.float64) * 10
    y = torch.randint(0, classes, (n,), generator=g)
    return e, norms, y


@pytest.mark.parametrize("qs", [0.0, 0.6])
@pytest.mark.parametrize("kind", KINDS)
def test_target_only_margin_equals_dense_formulation(kind, qs):
    head = _head(kind, qs=qs, chunk_elems=37 * 5)  # 5 rows per chunk: exercises the chunking
    e, norms, y = _batch()
    e.requires_grad_()
    loss, g = head(e, norms, y)
    ref = dense_loss(head, e, g, y)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(loss, [e, head.kernel])
    want = torch.autograd.grad(ref, [e, head.kernel])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.logits(e, y, g).log_softmax(1).gather(1, y[:, None]).mean().neg(), ref.detach())


@pytest.mark.parametrize("qs", [0.0, 0.6])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind, qs):
    # eval mode: in train mode every call would move the running μ/σ, so the finite differences
    # would compare different functions
    head = _head(kind, classes=7, dim=5, qs=qs, chunk_elems=7 * 4)
    e, norms, y = _batch(n=6, dim=5, classes=7, seed=1)

    def f(e_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return functional_call(head, {"kernel": w_}, (e_, norms, y))[0]

    assert torch.autograd.gradcheck(f, (e.requires_grad_(), head.kernel.detach().clone().requires_grad_()))


def test_cosface_loss_by_hand():
    head = MarginHead("cosface", 2, 2).double().eval()
    with torch.no_grad():
        head.kernel.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # proxies e1, e2 (norms do not matter)
    loss, _ = head(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.ones(1, 1), torch.tensor([0]))
    # cos = [1-ε (clamped), 0]; target cos - m; CE = log(1 + exp(0 - s(1-ε-m)))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-64 * (1 - EPS - 0.4))), rel=1e-12)


def test_adaface_interpolates_arcface_and_cosface():
    """ĝ = -1 gives ArcFace's cos(θ+m); ĝ = 0 gives CosFace's cos - m (the AdaFace paper's reading)."""
    e, norms, y = _batch()
    for g_value, other in ((-1.0, "arcface"), (0.0, "cosface")):
        ada, ref = _head("adaface"), _head(other)
        ref.kernel.data.copy_(ada.kernel.data)
        # ĝ = clip(h (n - μ)/(σ + ε)): μ = n gives 0; a huge μ gives -1
        ada.batch_mean.fill_(5.0 if g_value == 0 else 1e6)
        n = torch.full_like(norms, 5.0)
        torch.testing.assert_close(ada(e, n, y)[0], ref(e, n, y)[0])


def test_margin_scaler_and_running_statistics():
    head = MarginHead("adaface", 4, 3)
    assert head.batch_mean.item() == 0 and head.batch_std.item() == 0  # docs/method.md: start at 0
    head.batch_mean.fill_(10.0)
    head.batch_std.fill_(4.0)
    e = F.normalize(torch.randn(4, 3), dim=1)
    norms = torch.tensor([[10.0], [14.0], [30.0], [0.0]])
    _, g = head.eval()(e, norms, torch.tensor([0, 1, 2, 3]))
    want = [0.0, 0.333 * 4 / 4.001, 1.0, 0.333 * (0.001 - 10) / 4.001]  # n' = clip(n, 0.001, 100)
    torch.testing.assert_close(g.view(-1), torch.tensor(want))
    assert head.batch_mean.item() == 10.0  # eval mode leaves the statistics alone
    assert not g.requires_grad

    head.train()
    head(e, norms, torch.tensor([0, 1, 2, 3]))
    safe = norms.clamp(0.001, 100)
    assert head.batch_mean.item() == pytest.approx(0.01 * safe.mean().item() + 0.99 * 10.0)
    assert head.batch_std.item() == pytest.approx(0.01 * safe.std().item() + 0.99 * 4.0)
    head(e[:1], norms[:1], torch.tensor([0]))  # a one-sample batch must not make σ NaN
    assert math.isfinite(head.batch_std.item())
    assert {"batch_mean", "batch_std", "kernel"} <= set(head.state_dict())


def test_quality_scale_factor_on_the_logits():
    head = _head("cosface", qs=0.5)
    e, _, y = _batch(n=2)
    g = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    z = head.logits(e, y, g)
    head.quality_scale = 0.0
    z0 = head.logits(e, y, g)
    # τ_q = 0.5: factor sigmoid(s·ĝ) -> 0.5 at ĝ = 0, sigmoid(64) at ĝ = 1
    torch.testing.assert_close(z[0], 0.5 * z0[0])
    torch.testing.assert_close(z[1], torch.sigmoid(torch.tensor(64.0, dtype=torch.float64)) * z0[1])


@pytest.mark.parametrize("kind", KINDS)
def test_a_quality_scale_passed_to_forward_replaces_the_heads_own(kind):
    """The trainer passes each epoch's τ_q of the warm-up ramp (docs/method.md §3) to forward."""
    e, norms, y = _batch()
    for own, passed in [(0.0, 0.4), (0.6, 0.0), (0.6, 0.2)]:
        head, ref = _head(kind, qs=own), _head(kind, qs=passed)  # eval mode: μ, σ stay fixed
        ref.kernel.data.copy_(head.kernel)
        loss, g = head(e, norms, y, quality_scale=passed)
        torch.testing.assert_close(loss, dense_loss(ref, e, g, y), rtol=1e-12, atol=1e-12)
        assert not torch.isclose(loss, head(e, norms, y)[0])  # without it: the head's own τ_q


def test_kernel_init_unit_columns():
    head = MarginHead("adaface", 100, 32)
    torch.testing.assert_close(head.kernel.norm(dim=0), torch.ones(100))
    assert head.kernel.abs().max() <= 1.0


def test_fp32_under_autocast():
    head = MarginHead("adaface", 11, 8).eval()
    e = F.normalize(torch.randn(4, 8), dim=1)
    norms, y = torch.rand(4, 1) * 20, torch.randint(0, 11, (4,))
    ref, _ = head(e, norms, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, g = head(e.bfloat16(), norms.bfloat16(), y)
    assert loss.dtype == torch.float32 and g.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=0.02, atol=0.02)


def test_unknown_kind():
    with pytest.raises(ValueError, match="adaface, arcface, cosface"):
        MarginHead("sphereface", 3)


def test_chunk_size_is_device_aware_and_a_config_key():
    from qgface.config import ConfigError, load_config
    from qgface.losses.margin import DEFAULT_CHUNK_ELEMS

    head = MarginHead("adaface", 1000, 8)
    assert head.chunk_rows() == DEFAULT_CHUNK_ELEMS["cpu"] // 1000
    assert DEFAULT_CHUNK_ELEMS["cuda"] // 617_970 >= 256  # WebFace12M: hundreds of rows per kernel read
    assert MarginHead("adaface", 1000, 8, chunk_elems=3000).chunk_rows() == 3
    assert MarginHead("adaface", 1000, 8, chunk_elems=10).chunk_rows() == 1
    assert load_config().head.chunk_elems == 0
    with pytest.raises(ConfigError, match="head.chunk_elems must be >= 0"):
        load_config(overrides=["head.chunk_elems=-1"])


@pytest.mark.parametrize("rows_per_chunk", [1, 5, 12, 100])
def test_chunking_does_not_change_loss_or_gradients(rows_per_chunk):
    ref_head = _head("adaface", qs=0.6, chunk_elems=37 * 100)
    e, norms, y = _batch()
    e.requires_grad_()
    ref = ref_head(e, norms, y)[0]
    want = torch.autograd.grad(ref, [e, ref_head.kernel])
    head = _head("adaface", qs=0.6, chunk_elems=37 * rows_per_chunk)
    head.kernel.data.copy_(ref_head.kernel.data)
    loss = head(e, norms, y)[0]
    torch.testing.assert_close(loss, ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad(loss, [e, head.kernel]), want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_gradient_follows_the_upstream_factor_and_clamped_cosines_get_none():
    # the gradient is formed in forward; backward must scale it by whatever multiplies the loss
    head = _head("arcface", classes=5, dim=3)
    e, norms, y = _batch(n=4, dim=3, classes=5)
    e = e.detach()
    # row 0 equals class 2's proxy, so its cosine with class 2 (a non-target) is clamped at 1 - ε
    y[0] = 0
    e[0] = F.normalize(head.kernel.detach()[:, 2], dim=0)
    e.requires_grad_()
    loss = head(e, norms, y)[0]
    (g1,) = torch.autograd.grad(loss, [e], retain_graph=True)
    (g3,) = torch.autograd.grad(3.0 * loss, [e])
    torch.testing.assert_close(g3, 3.0 * g1)
    ref = dense_loss(head, e, head.current_g_hat(norms).double(), y)
    (g_ref,) = torch.autograd.grad(ref, [e])
    torch.testing.assert_close(g1, g_ref, rtol=1e-10, atol=1e-12)


def test_no_gradient_work_or_backward_under_no_grad():
    head = _head("adaface")
    e, norms, y = _batch()
    with torch.no_grad():
        loss, _ = head(e.requires_grad_(), norms, y)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, dense_loss(head, e.detach(), head.current_g_hat(norms).double(), y))
