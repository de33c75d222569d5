"""Quality-guided contrastive loss (docs/method.md §4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qgface.losses import qg_contrastive_loss, quality_factor
from qgface.losses.contrast import pair_quality


def _unit(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def _scalers(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)


E = 1e-3  # the reference's ε in every linear/cos denominator


@pytest.mark.parametrize(
    "method,range_,t,tau,want",
    [
        ("sgn", "half", 0.25, 0.5, 1.0),
        ("linear", "half", 0.25, 0.5, 0.25 / 0.501),
        ("cos", "half", 0.25, 0.5, (1 - math.cos(math.pi * 0.25 / 0.501)) / 2),
        ("sgn", "half", 0.75, 0.5, 0.0),
        ("linear", "half", 0.75, 0.5, 0.0),
        ("cos", "half", 0.75, 0.5, 0.0),
        ("sgn", "whole", 0.75, 0.5, 1.0),
        ("linear", "whole", 0.75, 0.5, -0.25 / -0.499),
        ("cos", "whole", 0.75, 0.5, math.cos(math.pi * 0.75 / (2 * 0.501)) + 1),
        ("linear", "half", 0.1, 0.4, 0.1 / 0.401),
        ("cos", "half", 0.1, 0.4, (1 - math.cos(math.pi * 0.1 / 0.401)) / 2),
        # t = τ takes s2, which with ε is not exactly 1 (the reference's numbers)
        ("linear", "whole", 0.4, 0.4, -0.6 / -0.599),
        ("cos", "whole", 0.4, 0.4, math.cos(math.pi * 0.6 / 1.202) + 1),
        ("linear", "whole", 1.0, 0.4, 0.0),
        ("cos", "whole", 1.0, 0.4, math.cos(math.pi * 1.2 / 1.202) + 1),
    ],
)
def test_quality_factor_at_hand_points(method, range_, t, tau, want):
    got = quality_factor(torch.tensor([t], dtype=torch.float64), tau, method, range_)
    assert got.item() == pytest.approx(want, abs=1e-12)


def test_quality_factor_epsilon_is_the_references():
    """The ε moves linear/cos by 2e-4 .. 2e-3 relative, as measured against the reference; sgn has none."""
    t = torch.tensor([0.25], dtype=torch.float64)
    assert quality_factor(t, 0.5, "linear", "half").item() == pytest.approx(0.5 / (1 + 2 * E), rel=1e-12)
    assert quality_factor(t, 0.5, "linear", "half").item() != pytest.approx(0.5, rel=1e-4)
    assert quality_factor(t, 0.5, "sgn", "half").item() == 1.0


def test_quality_factor_rejects_unknown_options():
    with pytest.raises(ValueError, match="sgn, linear, cos"):
        quality_factor(torch.zeros(1), 0.5, "tanh", "half")
    with pytest.raises(ValueError, match="half, whole"):
        quality_factor(torch.zeros(1), 0.5, "sgn", "full")


def test_pair_quality_select():
    gq, gk = _scalers([-1.0, 0.5]), _scalers([0.0, 1.0])  # t: q (0, .75), k (.5, 1)
    torch.testing.assert_close(pair_quality(gq, gk, "low").view(-1), torch.tensor([0.0, 0.75], dtype=torch.float64))
    torch.testing.assert_close(pair_quality(gq, gk, "mean").view(-1), torch.tensor([0.25, 0.875], dtype=torch.float64))
    torch.testing.assert_close(pair_quality(gq, gk, "high").view(-1), torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_loss_by_hand():
    # B = 1, D = 2, K = 2, low quality pair (factor 1), margin 0.1, s = 10, no rescale
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    loss = qg_contrastive_loss(
        q, k, queue, _scalers([-1.0]), _scalers([1.0]), s=10.0, margin=0.1, mask_same_class=False, rescale=False
    )
    rows = [[0.6 - 0.1, 0.0, -1.0], [0.6 - 0.1, 0.8, -0.6]]  # q→k: q·k, q·v; k→q: k·q, k·v
    want = sum(-10 * r[0] + math.log(sum(math.exp(10 * x) for x in r)) for r in rows) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_high_quality_pairs_give_no_gradient_and_rescaled_constant():
    """Factor 0 (sgn/half, t >= τ): logits all 0, CE = log(K+1), rescaled to log(129) for any K."""
    for k_size in (128, 16384):
        q, k = _unit(2, 8, seed=1).requires_grad_(), _unit(2, 8, seed=2)
        queue = _unit(k_size, 8, seed=3)
        loss = qg_contrastive_loss(q, k, queue, _scalers([1.0, 0.2]), _scalers([0.5, 0.9]), mask_same_class=False)
        assert loss.item() == pytest.approx(math.log(129), rel=1e-12)
        (grad,) = torch.autograd.grad(loss, q)
        assert torch.count_nonzero(grad) == 0


def test_rescale_factor():
    q, k = _unit(3, 8, seed=4), _unit(3, 8, seed=5)
    lo = _scalers([-1.0, -0.5, 0.0])
    for k_size in (128, 16384):
        queue = _unit(k_size, 8, seed=6)
        raw = qg_contrastive_loss(q, k, queue, lo, lo, mask_same_class=False, rescale=False)
        scaled = qg_contrastive_loss(q, k, queue, lo, lo, mask_same_class=False)
        assert scaled.item() == pytest.approx(raw.item() * math.log(129) / math.log(k_size + 1), rel=1e-12)
        if k_size == 128:
            assert scaled.item() == pytest.approx(raw.item(), rel=1e-12)


def test_same_identity_entries_contribute_nothing():
    b, d, k_size = 3, 8, 20
    q, k = _unit(b, d, seed=7), _unit(b, d, seed=8)
    labels = torch.tensor([4, 4, 4])  # three images of one person
    queue_labels = torch.tensor([5, 4, 6, 1, 7, 4, 3, 9, 4, 1] * 2)
    queue = _unit(k_size, d, seed=9)
    lo = _scalers([-1.0] * b)
    kw = dict(q_labels=labels, queue_labels=queue_labels)
    base = qg_contrastive_loss(q, k, queue, lo, lo, **kw)
    same = queue_labels == 4
    changed = queue.clone()
    changed[same] = _unit(int(same.sum()), d, seed=10)
    torch.testing.assert_close(qg_contrastive_loss(q, k, changed, lo, lo, **kw), base, rtol=0, atol=0)
    # ...whereas changing an entry of another identity changes the loss
    other = queue.clone()
    other[0] = -other[0]
    assert qg_contrastive_loss(q, k, other, lo, lo, **kw).item() != pytest.approx(base.item())
    # masked entries are the constant logit 0 (docs/method.md "set to 0"): the same loss as no masking on a
    # queue whose same-identity keys are zero vectors (cosine exactly 0)
    zeroed = torch.where(same.unsqueeze(1), 0.0, queue)
    torch.testing.assert_close(qg_contrastive_loss(q, k, zeroed, lo, lo, mask_same_class=False), base)


def test_own_index_masks_only_own_entries_without_labels():
    d = 8
    q, k = _unit(2, d, seed=11), _unit(2, d, seed=12)
    queue = torch.cat([k, q, _unit(6, d, seed=13)])  # slots 0,1 = H views, 2,3 = L views
    own = torch.tensor([[0, 2], [1, 3]])
    lo = _scalers([-1.0, -1.0])
    # one sample: its own two entries contribute nothing
    base = qg_contrastive_loss(q[:1], k[:1], queue, lo[:1], lo[:1], own_index=own[:1])
    changed = queue.clone()
    changed[[0, 2]] = _unit(2, d, seed=14)
    torch.testing.assert_close(
        qg_contrastive_loss(q[:1], k[:1], changed, lo[:1], lo[:1], own_index=own[:1]), base, rtol=0, atol=0
    )
    # two samples: sample 0's views stay negatives for sample 1 (no labels, so no identity masking)
    both = qg_contrastive_loss(q, k, queue, lo, lo, own_index=own)
    assert qg_contrastive_loss(q, k, changed, lo, lo, own_index=own).item() != pytest.approx(both.item())
    # without own_index the own views are (wrongly) negatives and the loss is larger
    assert qg_contrastive_loss(q, k, queue, lo, lo, mask_same_class=False).item() > both.item()
    with pytest.raises(ValueError, match="own_index"):
        qg_contrastive_loss(q, k, queue, lo, lo)


@pytest.mark.parametrize("method,range_", [("sgn", "half"), ("linear", "whole"), ("cos", "whole")])
def test_gradcheck_float64(method, range_):
    # detach_pos is a stop-gradient: finite differences cannot check it (see the next test)
    b, d, k_size = 3, 5, 7
    queue = _unit(k_size, d, seed=15)
    gq, gk = _scalers([-0.8, 0.1, 0.6]), _scalers([0.3, -0.2, 0.9])
    labels, queue_labels = torch.tensor([0, 1, 2]), torch.tensor([0, 4, 1, 5, 6, 2, 7])

    def f(q_: torch.Tensor, k_: torch.Tensor) -> torch.Tensor:
        return qg_contrastive_loss(
            q_,
            k_,
            queue,
            gq,
            gk,
            q_labels=labels,
            queue_labels=queue_labels,
            s=4.0,
            method=method,
            scale_range=range_,
            margin=0.2,
        )

    q, k = _unit(b, d, seed=16).requires_grad_(), _unit(b, d, seed=17).requires_grad_()
    assert torch.autograd.gradcheck(f, (q, k))


def test_detach_pos_keeps_value_changes_gradient():
    q, k = _unit(2, 6, seed=18).requires_grad_(), _unit(2, 6, seed=19).requires_grad_()
    queue, lo = _unit(5, 6, seed=20), _scalers([-1.0, -1.0])
    a = qg_contrastive_loss(q, k, queue, lo, lo, mask_same_class=False)
    b = qg_contrastive_loss(q, k, queue, lo, lo, mask_same_class=False, detach_pos=True)
    torch.testing.assert_close(a, b)
    ga, gb = torch.autograd.grad(a, q)[0], torch.autograd.grad(b, q)[0]
    assert not torch.allclose(ga, gb)


def test_stats():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    queue = torch.tensor([[0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    out = qg_contrastive_loss(
        q,
        k,
        queue,
        _scalers([-1.0, 1.0]),
        _scalers([1.0, 1.0]),
        q_labels=torch.tensor([0, 1]),
        queue_labels=torch.tensor([1, 0, 2]),
        return_stats=True,
    )
    plain = qg_contrastive_loss(
        q,
        k,
        queue,
        _scalers([-1.0, 1.0]),
        _scalers([1.0, 1.0]),
        q_labels=torch.tensor([0, 1]),
        queue_labels=torch.tensor([1, 0, 2]),
    )
    torch.testing.assert_close(out.loss, plain)
    assert out.active_fraction.item() == pytest.approx(0.5)  # pair 0 is low quality, pair 1 is not
    assert out.pos_cos.item() == pytest.approx((0.8 + 1.0) / 2)
    # unmasked negatives per row: q0 (label 0): v0, v2 = [0.6, -1]; q1 (label 1): v1, v2 = [0, 0];
    # k0: [0.96, -0.8]; k1: [0, 0]
    rows = [0.6, 0.0, 0.96, 0.0]
    assert out.hardest_neg_cos.item() == pytest.approx(sum(rows) / 4)
