"""The contrastive queue: ring order, proxy compensation, views, distributed gather (docs/method.md §4)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qgface.losses import ContrastQueue, gather_own_first, qg_contrastive_loss
from qgface.losses.queue import as_held_by_rank


def _keys(n: int, dim: int, start: float = 0.0) -> torch.Tensor:
    return torch.arange(n * dim, dtype=torch.float32).reshape(n, dim) + start


def test_enqueue_ring_order_and_slots():
    q = ContrastQueue(5, dim=2, mode="fifo")
    assert (q.labels == -1).all() and q.ptr.item() == 0 and q.dynamic_margin.item() == 0
    slots = q.enqueue(_keys(3, 2), torch.tensor([0, 1, 2]), None)
    assert slots.tolist() == [0, 1, 2]
    keys, labels = q.current(None)
    torch.testing.assert_close(keys, _keys(3, 2))  # empty slots are excluded
    assert labels.tolist() == [0, 1, 2]
    slots = q.enqueue(_keys(3, 2, 100.0), torch.tensor([3, 4, 5]), None)
    assert slots.tolist() == [3, 4, 0] and q.ptr.item() == 1  # wraps around, oldest overwritten
    keys, labels = q.current(None)
    assert labels.tolist() == [5, 1, 2, 3, 4]  # slot order
    torch.testing.assert_close(keys[0], _keys(3, 2, 100.0)[2])


def test_effective_size_keeps_most_recent_and_index_mapping():
    q = ContrastQueue(6, dim=2, mode="fifo")
    q.enqueue(_keys(4, 2), torch.tensor([0, 1, 2, 3]), None)
    slots = q.enqueue(_keys(4, 2, 50.0), torch.tensor([4, 5, 6, 7]), None)  # slots 4, 5, 0, 1
    _, labels = q.current(None, effective_size=5)
    assert labels.tolist() == [6, 7, 3, 4, 5]  # the five most recent, in slot order (slot 2 is oldest)
    pos = q.index_in_current(slots, effective_size=5)
    assert labels[pos].tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="effective_size"):
        q.index_in_current(slots, effective_size=3)


def test_proxy_compensation_by_hand():
    q = ContrastQueue(4, dim=2, mode="proxy")
    w_then = torch.tensor([[0.0, 5.0], [2.0, 0.0]])  # [D, C]: class 0 proxy (0, 2), class 1 proxy (5, 0)
    q.enqueue(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1]), w_then)
    torch.testing.assert_close(q.proxies[:2], torch.tensor([[0.0, 2.0], [5.0, 0.0]]))
    w_now = torch.tensor([[0.0, 5.0], [3.0, 1.0]])  # class 0 -> (0, 3), class 1 -> (5, 1)
    keys, _ = q.current(w_now)
    # v0 = (1,0) + (1/2)((0,3)-(0,2)) = (1, 0.5);  v1 = (0,3) + (3/5)((5,1)-(5,0)) = (0, 3.6)
    torch.testing.assert_close(keys, torch.tensor([[1.0, 0.5], [0.0, 3.6]]))
    fifo = ContrastQueue(4, dim=2, mode="fifo")
    fifo.enqueue(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), w_then)
    torch.testing.assert_close(fifo.current(w_now)[0], torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="proxy_weight"):
        q.current(None)


def test_state_dict_round_trip_and_errors(tmp_path):
    q = ContrastQueue(8, dim=3)
    q.enqueue(torch.randn(3, 3), torch.tensor([1, 2, 3]), torch.randn(3, 4))
    q.update_dynamic_margin(torch.tensor([0.8, 0.6]), torch.tensor([0.3, 0.1]))
    torch.save(q.state_dict(), tmp_path / "queue.pt")
    r = ContrastQueue(8, dim=3)
    r.load_state_dict(torch.load(tmp_path / "queue.pt", weights_only=True))
    for name in ("keys", "labels", "proxies", "ptr", "dynamic_margin"):
        assert torch.equal(getattr(r, name), getattr(q, name)), name
    with pytest.raises(ValueError, match="at least 9"):
        q.enqueue(torch.randn(9, 3), torch.zeros(9, dtype=torch.long), torch.randn(3, 4))
    with pytest.raises(ValueError, match="proxy, fifo"):
        ContrastQueue(4, mode="moco")


def test_dynamic_margin_ema():
    q = ContrastQueue(4, dim=2, t_alpha=0.01)
    q.update_dynamic_margin(torch.tensor([0.8, 0.6]), torch.tensor([0.3, 0.1]))  # mean diff 0.5
    assert q.dynamic_margin.item() == pytest.approx(0.005)
    q.update_dynamic_margin(0.9, 0.4)
    assert q.dynamic_margin.item() == pytest.approx(0.005 * 0.99 + 0.005)


def test_gather_is_identity_without_process_group():
    t = torch.randn(3, 2)
    assert gather_own_first(t) is t


def test_enqueued_slots_drive_own_masking():
    """enqueue's slots -> index_in_current -> own_index: the sample's own views stop being negatives."""
    torch.manual_seed(0)
    b, d = 2, 4
    queue = ContrastQueue(10, dim=d, mode="fifo")
    queue.enqueue(torch.nn.functional.normalize(torch.randn(5, d), dim=1), torch.arange(5), None)
    k, q = torch.nn.functional.normalize(torch.randn(2, b, d), dim=2)
    slots = queue.enqueue(torch.cat([k, q]), torch.tensor([7, 8, 7, 8]), None)  # [H_1..H_B, L_1..L_B]
    own = queue.index_in_current(slots, effective_size=8).view(2, b).t()  # [B, 2]: (H_i, L_i)
    keys, labels = queue.current(None, effective_size=8)
    lo = torch.full((b, 1), -1.0)
    with_own = qg_contrastive_loss(q, k, keys, lo, lo, own_index=own)
    by_label = qg_contrastive_loss(q, k, keys, lo, lo, q_labels=torch.tensor([7, 8]), queue_labels=labels)
    torch.testing.assert_close(with_own, by_label)  # here the only same-label entries are the own views


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        local = torch.full((2, 3), float(rank)) + torch.arange(2.0).unsqueeze(1) / 10  # rows r.0, r.1
        gathered = gather_own_first(local)
        queue = ContrastQueue(8, dim=3, mode="proxy")
        w = torch.arange(3 * 20, dtype=torch.float32).reshape(3, 20)
        slots = queue.enqueue(local, torch.tensor([10 * rank, 10 * rank + 1]), w)
        torch.save(
            {
                "gathered": gathered,
                "slots": slots,
                "keys": queue.keys.clone(),
                "labels": queue.labels.clone(),
                "proxies": queue.proxies.clone(),
                "ptr": queue.ptr.clone(),
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes each import torch: ~10 s on two cores
def test_gather_and_enqueue_order_in_a_real_two_process_group(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    rows = {0: torch.tensor([0.0, 0.1]), 1: torch.tensor([1.0, 1.1])}
    # own rank first, then the others in rank order
    torch.testing.assert_close(r0["gathered"][:, 0], torch.cat([rows[0], rows[1]]))
    torch.testing.assert_close(r1["gathered"][:, 0], torch.cat([rows[1], rows[0]]))
    for rank, res, other in ((0, r0, 1), (1, r1, 0)):
        assert res["slots"].tolist() == [0, 1]  # the local entries are always first
        assert res["labels"].tolist() == [10 * rank, 10 * rank + 1, 10 * other, 10 * other + 1, -1, -1, -1, -1]
        torch.testing.assert_close(res["keys"][:4, 0], torch.cat([rows[rank], rows[other]]))
        w = torch.arange(3 * 20, dtype=torch.float32).reshape(3, 20)
        torch.testing.assert_close(res["proxies"][:4], w[:, res["labels"][:4]].t())
        assert res["ptr"].item() == 4


def _ranks_queues(size: int, world: int, per_rank: int, steps: int) -> list[ContrastQueue]:
    """Every rank's queue after ``steps`` enqueues of ``per_rank`` keys per rank, gathered own first as
    gather_own_first does across processes."""
    queues = [ContrastQueue(size, dim=3, mode="proxy") for _ in range(world)]
    kernel = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    for step in range(steps):
        keys = [_keys(per_rank, 3, 1000.0 * step + 100.0 * r) for r in range(world)]
        labels = [torch.arange(per_rank) + 10 * r + step for r in range(world)]
        for r, queue in enumerate(queues):
            order = [r, *range(r), *range(r + 1, world)]

            def gather(t: torch.Tensor, order: list[int] = order, keys=keys, labels=labels) -> torch.Tensor:
                return torch.cat([(keys if t.is_floating_point() else labels)[i] for i in order])

            queue.enqueue(keys[r], labels[r], kernel, gather=gather)
    return queues


@pytest.mark.parametrize("world", [2, 3])
def test_rank_zeros_queue_becomes_each_ranks_own(world):
    """A resumed rank r gets its own queue back from rank 0's (same entries, own-first order per block)."""
    per_rank, steps = 2, 7  # 7 steps into a queue of 3 blocks: wrapped twice
    block = world * per_rank
    queues = _ranks_queues(3 * block, world, per_rank, steps)
    saved = queues[0].state_dict()
    for r in range(world):
        held = as_held_by_rank(saved, r, world, block)
        for name, value in queues[r].state_dict().items():
            assert torch.equal(held[name], value), (r, name)
    assert not torch.equal(queues[1].keys, queues[0].keys)  # the ranks' orders do differ
    with pytest.raises(ValueError, match="not made of whole blocks"):
        as_held_by_rank(_ranks_queues(3 * block + 1, world, per_rank, 1)[0].state_dict(), 1, world, block)
