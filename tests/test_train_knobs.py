"""Speed and memory knobs of the trainer on a CPU (docs/method.md §5): gradient accumulation,
activation checkpointing, torch.compile, fused SGD, DDP's bucket views and gradient compression."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from qgface.config import ConfigError, load_config
from qgface.data.synthetic import generate_training_set
from qgface.models import build_backbone
from qgface.train import dist as qdist
from qgface.train.engine import Trainer

TINY = [
    "model.backbone=ir_tiny",
    "data.batch_size=8",
    "data.num_workers=0",
    "contrast.enabled=false",
    "optim.lr=0.0",
    "optim.weight_decay=0.0",
]


@pytest.fixture(scope="module")
def train_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("knobs") / "set"
    generate_training_set(root, identities=8, images_per_identity=4, workers=1)
    return root


def _trainer(root: Path, run_dir: Path, *extra: str) -> Trainer:
    return Trainer(load_config(None, [f"data.root={root}", f"run_dir={run_dir}", *TINY, *extra]))


def _one_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(trainer._epoch_batches()))


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head", ["head.partial_fc=false", "head.partial_fc=true"])
def test_accumulated_micro_batches_give_the_big_batch_gradient(train_root, tmp_path, head):
    big = _trainer(train_root, tmp_path / "a", head)
    acc = _trainer(train_root, tmp_path / "b", head, "train.grad_accum=4")
    try:
        views, labels = _one_batch(big)
        _one_batch(acc)
        for t in (big, acc):
            # eval mode: BatchNorm uses its running statistics and the head its fixed μ/σ, so the mean
            # loss of the batch is exactly the mean of its four micro-batch losses
            t.model.eval()
            out = t.train_step(views, labels, t.current_schedule())
        g_big, g_acc = _grads(big), _grads(acc)
        assert g_big.keys() == g_acc.keys() and "head.kernel" in g_big
        for key in g_big:
            scale = g_big[key].abs().max().item()  # float32 sums in another order: relative to the largest entry
            torch.testing.assert_close(g_acc[key], g_big[key], rtol=1e-3, atol=1e-4 * scale, msg=key)
        assert out.emb.shape == (16, 512)  # rows merged back into [H_1..H_8, L_1..L_8]
        torch.testing.assert_close(
            out.emb, big.train_step(views, labels, big.current_schedule()).emb, rtol=1e-4, atol=1e-5
        )
    finally:
        big.close(), acc.close()
    with pytest.raises(ConfigError, match="data.batch_size=8 must be a multiple of train.grad_accum=3"):
        _trainer(train_root, tmp_path / "c", "train.grad_accum=3")


def test_fused_sgd_is_used_on_cpu_and_steps_like_the_plain_one(train_root, tmp_path):
    lr = ["optim.lr=0.1", "optim.weight_decay=5e-4"]
    fused, plain = (
        _trainer(train_root, tmp_path / "a", *lr),
        _trainer(train_root, tmp_path / "b", *lr, "train.fused_optimizer=false"),
    )
    try:
        assert fused.optimizer.defaults["fused"] is True and not plain.optimizer.defaults["fused"]
        views, labels = _one_batch(fused)
        _one_batch(plain)
        for step in range(2):  # the second step uses the momentum buffers
            for t in (fused, plain):
                torch.manual_seed(step)  # the trainers share this process's RNG: the same dropout draws
                t.train_step(views, labels, t.current_schedule())
        for (k, a), (_, b) in zip(fused.model.named_parameters(), plain.model.named_parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    finally:
        fused.close(), plain.close()


def test_activation_checkpointing_keeps_loss_gradients_and_bn_statistics():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 112, 112)
    models = [build_backbone("ir_tiny").train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    models[1].activation_checkpointing = True
    results = []
    for model in models:
        torch.manual_seed(1)  # the same dropout draws
        emb, norms = model(x)
        loss = emb[:, :7].sum() + norms.mean()
        loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}, model.state_dict()))
    (l0, g0, s0), (l1, g1, s1) = results
    torch.testing.assert_close(l1, l0)
    for key in g0:
        torch.testing.assert_close(g1[key], g0[key], rtol=1e-5, atol=1e-6, msg=key)
    for key in s0:  # running means/vars moved once, not twice (the recomputation leaves them alone)
        torch.testing.assert_close(s1[key], s0[key], msg=key)


@pytest.mark.slow  # inductor compiles the tiny backbone on the CPU: ~1 min on two cores
def test_compiled_backbone_trains_like_the_eager_one(train_root, tmp_path):
    eager, compiled = _trainer(train_root, tmp_path / "a"), _trainer(train_root, tmp_path / "b", "train.compile=true")
    try:
        views, labels = _one_batch(eager)
        _one_batch(compiled)
        # eval mode: no dropout (compiled code draws its random numbers differently from eager code)
        eager.model.eval(), compiled.model.eval()
        a = eager.train_step(views, labels, eager.current_schedule())
        b = compiled.train_step(views, labels, compiled.current_schedule())
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-4, atol=1e-4)
        assert set(compiled.model.backbone.state_dict()) == set(eager.model.backbone.state_dict())  # no prefix
        for key, g in _grads(eager).items():
            torch.testing.assert_close(_grads(compiled)[key], g, rtol=1e-3, atol=1e-5, msg=key)
    finally:
        eager.close(), compiled.close()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = {}
        for compression in ("none", "fp16"):  # bf16 needs NCCL: tools/gpu_check.py runs it
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(6, 5), nn.PReLU(), nn.Linear(5, 3))
            ddp = qdist.wrap_ddp(model, torch.device("cpu"), static_graph=True, compression=compression)
            x = torch.arange(12.0).reshape(2, 6) / 10 + rank  # different data per rank
            for _ in range(2):  # static_graph settles after the first iteration
                model.zero_grad(set_to_none=False)
                ddp(x).square().sum().backward()
            bucket_view = all(p.grad.data_ptr() != 0 for p in model.parameters())
            result[compression] = ([p.grad.clone() for p in model.parameters()], bucket_view)
            local = nn.Sequential(nn.Linear(6, 5), nn.PReLU(), nn.Linear(5, 3))
            local.load_state_dict(model.state_dict())
            local(x).square().sum().backward()
            result[f"local_{compression}"] = [p.grad.clone() for p in local.parameters()]
        torch.save(result, f"{out}/ddp{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes each import torch: ~10 s on two cores
def test_ddp_averages_gradients_with_and_without_fp16_compression(tmp_path):
    mp.spawn(_ddp_worker, args=(_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"ddp{r}.pt") for r in (0, 1))
    mean = [(a + b) / 2 for a, b in zip(r0["local_none"], r1["local_none"])]
    for compression, tol in (("none", 1e-6), ("fp16", 1e-3)):
        for g0, g1, want in zip(r0[compression][0], r1[compression][0], mean):
            torch.testing.assert_close(g0, g1)  # every rank holds the same averaged gradient
            torch.testing.assert_close(g0, want, rtol=tol, atol=tol)
    assert load_config().train.grad_compression == "none"
    with pytest.raises(ConfigError, match="train.grad_compression must be one of none, bf16, fp16"):
        load_config(overrides=["train.grad_compression=int8"])
    with pytest.raises(ValueError, match="bf16 needs NCCL"):
        qdist.wrap_ddp(nn.Linear(2, 2), torch.device("cpu"), static_graph=False, compression="bf16")
