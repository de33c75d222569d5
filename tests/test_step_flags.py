"""The trainer's per-step flags (docs/method.md §5): read on the host once, OR-ed over ranks."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qgface.losses import ContrastQueue, qg_contrastive_loss
from qgface.train import dist as qdist


def test_hardest_negative_mean_skips_fully_masked_rows_without_indexing():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    k = q.clone()
    queue = torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)
    lo = torch.full((2, 1), -1.0, dtype=torch.float64)
    # pair 0 (label 5) sees both queue entries as negatives; pair 1 (label 7) has none (same class)
    out = qg_contrastive_loss(
        q, k, queue, lo, lo, q_labels=torch.tensor([5, 7]), queue_labels=torch.tensor([7, 7]), return_stats=True
    )
    # rows q0, k0: max(0.6, 1.0) = 1.0 each; rows q1, k1 are fully masked and left out
    assert out.hardest_neg_cos.item() == pytest.approx(1.0)
    none = qg_contrastive_loss(
        q, k, queue, lo, lo, q_labels=torch.tensor([7, 7]), queue_labels=torch.tensor([7, 7]), return_stats=True
    )
    assert none.hardest_neg_cos.item() == 0.0


def test_queue_reports_whether_its_view_holds_the_step_slots():
    queue = ContrastQueue(8, dim=2, mode="fifo")
    queue.enqueue(torch.randn(6, 2), torch.arange(6), None)
    slots = queue.enqueue(torch.randn(2, 2), torch.tensor([6, 7]), None)
    assert queue.holds_slots(slots, effective_size=3).dtype == torch.bool
    assert bool(queue.holds_slots(slots, effective_size=2)) and not bool(queue.holds_slots(slots[:1] - 5, 2))
    assert queue.index_in_current(slots, 2, check=False).tolist() == [0, 1]


def test_flags_without_a_process_group():
    assert qdist.any_rank([torch.tensor(False), torch.tensor(True), ~torch.isfinite(torch.tensor(float("nan")))]) == [
        False,
        True,
        True,
    ]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # rank 0 saw a non-finite loss, rank 1 a stop signal: both ranks must see both
        flags = qdist.any_rank([torch.tensor(rank == 0), torch.tensor(rank == 1), torch.tensor(False)])
        torch.save(flags, f"{out}/flags{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes each import torch: ~10 s on two cores
def test_flags_are_or_ed_over_two_gloo_ranks(tmp_path):
    mp.spawn(_worker, args=(_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"flags{rank}.pt") == [True, True, False]
