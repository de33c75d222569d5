"""The sharded margin head (qgface/losses/partial_fc.py) against the replicated MarginHead, on real
gloo process groups of 2 and 4 CPU ranks (torch.multiprocessing spawn, a file rendezvous).

Every rank builds the same global batch from one seed; the replicated head sees it whole, the
sharded head sees the rank's rows and its slice of the same kernel. One spawn per world size runs
all cases, so the test costs one process start-up per rank.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from qgface.losses.margin import MarginHead
from qgface.losses.partial_fc import (
    PartialFCHead,
    SingleProcess,
    sample_classes,
    sample_size,
    shard_range,
)
from qgface.losses.queue import ContrastQueue
from qgface.train.dist import ProcessGroupCollectives, destroy

C, D, N_LOCAL, LR = 37, 16, 6, 5.0  # 37 classes: uneven slices on 2 and 4 ranks
TOL = {"rtol": 1e-7, "atol": 1e-8}
"""fp64 throughout, except MarginHead's norm statistics, which it updates in fp32 (differences ~1e-9)"""


def _batch(world: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(global embeddings [N, D], norms [N, 1], labels [N], full kernel [D, C]), the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    n = world * N_LOCAL
    emb = F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=1)
    norms = 5.0 + 25.0 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (n,), generator=g)
    kernel = torch.randn(D, C, generator=g, dtype=torch.float64)
    return emb, norms, labels, kernel


def _replicated(kind: str, kernel: torch.Tensor, emb, norms, labels, qs: float, stats=(0.0, 0.0)):
    """Loss, grad wrt the embeddings, kernel after one SGD step, ĝ and (μ, σ) of MarginHead."""
    ref = MarginHead(kind, kernel.shape[1], embedding_size=D, quality_scale=qs).double()
    ref.kernel.data.copy_(kernel)
    ref.batch_mean.fill_(stats[0]), ref.batch_std.fill_(stats[1])
    e = emb.clone().requires_grad_()
    loss, g_hat = ref(e, norms, labels)
    loss.backward()
    torch.optim.SGD(ref.parameters(), lr=LR).step()
    return loss.detach(), e.grad, ref.kernel.detach(), g_hat, (ref.batch_mean.item(), ref.batch_std.item())


def _sharded(kind: str, kernel, emb, norms, labels, qs: float, rate: float = 1.0, stats=(0.0, 0.0)):
    comm = ProcessGroupCollectives()
    head = PartialFCHead(kind, C, comm, embedding_size=D, quality_scale=qs, sample_rate=rate, seed=7).double()
    head.kernel.data.copy_(kernel[:, head.class_start : head.class_start + head.num_local])
    head.batch_mean.fill_(stats[0]), head.batch_std.fill_(stats[1])
    own = slice(comm.rank * N_LOCAL, (comm.rank + 1) * N_LOCAL)
    e = emb[own].clone().requires_grad_()
    loss, g_hat = head(e, norms[own], labels[own])
    loss.backward()
    torch.optim.SGD(head.parameters(), lr=LR).step()
    return head, own, loss.detach(), e.grad, g_hat


def _check_equal_to_replicated(world: int) -> None:
    for case, (kind, qs) in enumerate([("adaface", 0.0), ("adaface", 0.5), ("arcface", 0.0), ("cosface", 0.3)]):
        emb, norms, labels, kernel = _batch(world, seed=case)
        stats = (0.0, 0.0) if case == 0 else (14.0, 6.0)  # the first step (σ = 0) and a trained state
        loss_r, grad_r, kernel_r, g_r, stats_r = _replicated(kind, kernel, emb, norms, labels, qs, stats)
        head, own, loss, grad, g_hat = _sharded(kind, kernel, emb, norms, labels, qs, stats=stats)
        where = f"{kind} qs={qs} world={world} rank={head.comm.rank}"
        torch.testing.assert_close(loss, loss_r, **TOL, msg=f"loss, {where}")
        torch.testing.assert_close(grad, grad_r[own], **TOL, msg=f"grad wrt embeddings, {where}")
        torch.testing.assert_close(
            head.kernel.detach(),
            kernel_r[:, head.class_start : head.class_start + head.num_local],
            **TOL,
            msg=f"kernel after SGD, {where}",
        )
        torch.testing.assert_close(g_hat, g_r[own], msg=f"margin scaler, {where}")
        assert (head.batch_mean.item(), head.batch_std.item()) == pytest.approx(stats_r, rel=1e-6), (
            where
        )  # MarginHead updates in fp32


def _check_sampling(world: int) -> None:
    rate = 0.3
    emb, norms, labels, kernel = _batch(world, seed=11)
    head, own, loss, grad, _ = _sharded("adaface", kernel, emb, norms, labels, 0.5, rate=rate, stats=(14.0, 6.0))
    local = head.last_sampled
    mine = labels[(labels >= head.class_start) & (labels < head.class_start + head.num_local)].unique()
    assert set(mine.tolist()) <= set(local.tolist()), "a positive class was dropped"
    assert local.numel() == max(math.ceil(rate * head.num_local), mine.numel())
    assert bool((local >= head.class_start).all() and (local < head.class_start + head.num_local).all())
    everyone = [None] * world
    dist.all_gather_object(everyone, local.tolist())
    union = torch.tensor(sorted(c for part in everyone for c in part))
    # dense reference: the replicated head over the sampled classes only, labels renumbered
    remap = torch.full((C,), -1, dtype=torch.long)
    remap[union] = torch.arange(union.numel())
    loss_r, grad_r, kernel_r, _, _ = _replicated(
        "adaface", kernel[:, union], emb, norms, remap[labels], 0.5, (14.0, 6.0)
    )
    torch.testing.assert_close(loss, loss_r, **TOL)
    torch.testing.assert_close(grad, grad_r[own], **TOL)
    # the sampled columns moved as in the dense computation; the others did not move at all
    start = head.class_start
    torch.testing.assert_close(head.kernel.detach()[:, local - start], kernel_r[:, remap[local]], **TOL)
    untouched = torch.ones(head.num_local, dtype=torch.bool)
    untouched[local - start] = False
    assert torch.equal(head.kernel.detach()[:, untouched], kernel[:, start : start + head.num_local][:, untouched])


def _check_proxies(world: int) -> None:
    emb, _, labels, kernel = _batch(world, seed=5)
    comm = ProcessGroupCollectives()
    head = PartialFCHead("adaface", C, comm, embedding_size=D, sample_rate=0.3).double()
    head.kernel.data.copy_(kernel[:, head.class_start : head.class_start + head.num_local])
    torch.testing.assert_close(head.proxies(labels), kernel[:, labels].t(), rtol=0, atol=0)
    # proxy compensation of a queue: the sharded proxies give the replicated keys (also after the
    # kernel moved, which is what compensation is for)
    sharded_q, replicated_q = ContrastQueue(32, dim=D).double(), ContrastQueue(32, dim=D).double()

    def gather(t):  # every rank already holds the global batch
        return t

    sharded_q.enqueue(emb, labels, head.proxies, gather=gather)
    replicated_q.enqueue(emb, labels, kernel, gather=gather)
    moved = kernel + 0.1 * torch.randn(kernel.shape, generator=torch.Generator().manual_seed(3), dtype=kernel.dtype)
    head.kernel.data.copy_(moved[:, head.class_start : head.class_start + head.num_local])
    keys, key_labels = sharded_q.current(head.proxies)
    keys_r, labels_r = replicated_q.current(moved)
    torch.testing.assert_close(keys, keys_r, rtol=1e-12, atol=1e-12)
    assert torch.equal(key_labels, labels_r)


def _worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    passed = False
    try:
        _check_equal_to_replicated(world)
        _check_sampling(world)
        _check_proxies(world)
        passed = True
    finally:
        destroy(after_success=passed)  # the trainer's teardown: gloo aborted here now and then otherwise


@pytest.mark.slow  # about 10 s: spawning the ranks imports torch once per rank
@pytest.mark.parametrize("world", [2, 4])
def test_sharded_head_on_gloo_ranks(tmp_path, world):
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous")), nprocs=world, join=True)


def test_one_process_equals_replicated_head():
    emb, norms, labels, kernel = _batch(1, seed=2)
    loss_r, grad_r, _, g_r, _ = _replicated("adaface", kernel, emb, norms, labels, 0.5)
    head = PartialFCHead("adaface", C, SingleProcess(), embedding_size=D, quality_scale=0.5).double()
    head.kernel.data.copy_(kernel)
    e = emb.clone().requires_grad_()
    loss, g_hat = head(e, norms, labels)
    loss.backward()
    torch.testing.assert_close(loss.detach(), loss_r)
    torch.testing.assert_close(e.grad, grad_r)
    torch.testing.assert_close(g_hat, g_r)


def test_a_quality_scale_passed_to_forward_replaces_the_heads_own():
    emb, norms, labels, kernel = _batch(1, seed=3)
    stats = (14.0, 6.0)  # a trained state: ĝ spread over (-1, 1), where τ_q changes the logits
    loss_r, _, _, g_r, _ = _replicated("adaface", kernel, emb, norms, labels, 0.5, stats)
    head = PartialFCHead("adaface", C, SingleProcess(), embedding_size=D, quality_scale=0.0).double()
    head.kernel.data.copy_(kernel)
    head.batch_mean.fill_(stats[0]), head.batch_std.fill_(stats[1])
    untouched = copy.deepcopy(head)  # forward in training mode moves the norm statistics
    loss, g_hat = head(emb, norms, labels, quality_scale=0.5)
    torch.testing.assert_close(loss, loss_r)
    torch.testing.assert_close(g_hat, g_r)
    assert not torch.isclose(untouched(emb, norms, labels)[0], loss_r)  # without it: the head's own τ_q


def test_slices_cover_the_classes_once():
    for c, w in [(37, 4), (8, 4), (5, 3), (2_059_906, 64)]:
        parts = [shard_range(c, r, w) for r in range(w)]
        assert parts[0][0] == 0 and sum(n for _, n in parts) == c
        assert all(s + n == parts[i + 1][0] for i, (s, n) in enumerate(parts[:-1]))
        assert max(n for _, n in parts) - min(n for _, n in parts) <= 1


def test_sampling_keeps_positives_and_resumes_exactly():
    positives = torch.tensor([0, 3, 9, 50, 99])
    pick = sample_classes(positives, 100, 0.3, torch.Generator().manual_seed(1))
    assert pick.numel() == sample_size(100, 0.3) == 30 and set(positives.tolist()) <= set(pick.tolist())
    assert torch.equal(pick, pick.sort().values) and pick.unique().numel() == 30
    many = torch.arange(0, 100, 2)  # 50 positives > 30: all kept, nothing else
    assert torch.equal(sample_classes(many, 100, 0.3, torch.Generator().manual_seed(1)), many)

    head = PartialFCHead("adaface", 200, SingleProcess(), embedding_size=D, sample_rate=0.25, seed=3)
    emb, norms = F.normalize(torch.randn(8, D), dim=1), torch.full((8, 1), 20.0)
    labels = torch.arange(8)
    head(emb, norms, labels)
    saved = {k: v.clone() for k, v in head.state_dict().items()}
    head(emb, norms, labels)
    second = head.last_sampled
    resumed = PartialFCHead("adaface", 200, SingleProcess(), embedding_size=D, sample_rate=0.25, seed=3)
    resumed.load_state_dict(saved)
    resumed(emb, norms, labels)
    assert torch.equal(resumed.last_sampled, second)
    head(emb, norms, labels)
    assert not torch.equal(head.last_sampled, second), "every step must draw a new share"


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFCHead("adaface", 10, SingleProcess(), sample_rate=0.0)
    with pytest.raises(ValueError, match="kind"):
        PartialFCHead("sphereface", 10, SingleProcess())
