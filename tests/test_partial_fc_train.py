"""The sharded margin head in the trainer (head.partial_fc): same training as the replicated head,
sharded checkpoints, exact resume, resume on another number of ranks, backbone-only loading.

The replicated head keeps rank-local AdaFace norm statistics where the sharded one keeps global
ones (docs/method.md §3, "Partial FC"), so the loss curves can only agree where the statistics do
not enter the loss: ``head.h=0`` makes the margin scaler ĝ = 0 for every image whatever μ and σ
are (the margin is then the fixed m, the quality scaler and the contrastive pair quality constant).
``contrast.scale_range=whole`` keeps the contrastive term's gradient in that case. Everything else
(queue with proxy compensation, weight decay, momentum, DDP averaging) is the default recipe.
The two heads round differently (plain autograd against MarginHead's fused gradient: ~1e-7 apart
after one step). This tiny batch-8 BatchNorm network is chaotic along its gradient: measured on 2
gloo ranks, changing optim.lr by 1e-5 (relative) at 0.005 moved the second step's backbone gradient
as much as the head's rounding did (0.11 vs 0.10 of a norm of 45), and by step 4 the losses were
4e-4 apart. At lr 0.0002 they agree to ~1e-6 after 4 steps (loss_cls still spans > 1), so the
comparison runs there and asserts agreement to 1e-4 (losses) / 1e-3 (weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import qgface
from qgface.config import ConfigError, load_config
from qgface.data.synthetic import generate_training_set
from qgface.eval.run import checkpoint_info
from qgface.losses.partial_fc import (
    PartialFCHead,
    SingleProcess,
    initial_proxies,
    shard_range,
)
from qgface.models import CheckpointError, load_backbone
from qgface.train import sharded_checkpoint as shards
from qgface.train.engine import Trainer
from qgface.train.sharded_head import check_partial_fc

REPO = Path(qgface.__file__).resolve().parents[1]
STEPS = 4
LR = 0.0002
ARGS = [
    "model.backbone=ir_tiny",
    "data.batch_size=4",
    "contrast.queue_size=64",
    "data.num_workers=0",
    "head.t_alpha=0.5",
    "head.h=0",
    "contrast.scale_range=whole",
    f"optim.lr={LR}",
    "train.log_every=1",
    "train.steps_per_epoch=2",
    "optim.epochs=2",
    "optim.milestones=[1]",
    "train.checkpoint_every=100",
]
SCRIPT = """import sys, torch
from qgface.config import load_config
from qgface.train.engine import Trainer
trainer = Trainer(load_config(None, sys.argv[2:]))
if sys.argv[1] != "-" and trainer.step > 0:  # the kernel state this rank resumed from
    head = trainer.model.head
    torch.save({"step": trainer.step, "class_start": head.class_start, "kernel": head.kernel.detach(),
                "momentum": trainer.optimizer.state[head.kernel]["momentum_buffer"]},
               f"{sys.argv[1]}/rank{head.comm.rank}.pt")
try:
    assert trainer.train() == 0
finally:
    trainer.close()
if sys.argv[1] != "-":  # the weights this rank ended with
    torch.save({k: p.detach() for k, p in trainer.model.backbone.named_parameters()},
               f"{sys.argv[1]}/final_rank{trainer.dist.rank}.pt")
"""


@pytest.fixture(scope="module")
def train_root(tmp_path_factory) -> Path:
    """12 identities x 6 images in InsightFace train.rec/.idx, generated once."""
    root = tmp_path_factory.mktemp("synthetic") / "set"
    generate_training_set(root, identities=12, images_per_identity=6, workers=1)
    return root


def _torchrun(ranks: int, root: Path, run: Path, *extra: str, dump: Path | None = None) -> None:
    script = run.parent / "train_script.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            str(script),
            str(dump or "-"),
            f"data.root={root}",
            f"run_dir={run}",
            *ARGS,
            *extra,
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _scalars(run: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _full_kernel(run: Path, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel [D, C], momentum) of a sharded run at ``step``, the shards concatenated in rank order."""
    folder = shards.shard_dir(run / "checkpoints", step)
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = [torch.load(folder / name, weights_only=True) for name in manifest["files"]]
    return torch.cat([p["kernel"] for p in parts], 1), torch.cat([p["momentum"] for p in parts], 1)


def _replicated_kernel(last: dict) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = last["head"]["kernel"]
    (momentum,) = [
        s["momentum_buffer"] for s in last["optimizer"]["state"].values() if s["momentum_buffer"].shape == kernel.shape
    ]
    return kernel, momentum


@pytest.fixture(scope="module")
def sharded_run(train_root, tmp_path_factory) -> Path:
    """2 epochs of 2 steps on 2 gloo ranks with head.partial_fc=true (epoch ends at steps 2 and 4)."""
    run = tmp_path_factory.mktemp("sharded") / "run"
    _torchrun(2, train_root, run, "head.partial_fc=true")
    return run


@pytest.mark.slow
def test_two_ranks_sharded_trains_as_replicated(train_root, sharded_run, tmp_path):
    replicated = tmp_path / "replicated"
    _torchrun(2, train_root, replicated, "head.partial_fc=false")
    for tag in ("train/loss_cls", "train/loss_con"):
        a, b = _scalars(replicated, tag), _scalars(sharded_run, tag)
        assert len(a) == len(b) == STEPS
        np.testing.assert_allclose(b, a, rtol=1e-4, err_msg=tag)
    assert np.ptp(_scalars(sharded_run, "train/loss_cls")) > 0.1  # the curve moves: the comparison means something
    a, b = _last(replicated), _last(sharded_run)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-3, atol=1e-5, msg=f"backbone {key}")
    kernel, momentum = _replicated_kernel(a)
    sharded_kernel, sharded_momentum = _full_kernel(sharded_run, STEPS)
    torch.testing.assert_close(sharded_kernel, kernel, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(sharded_momentum, momentum, rtol=1e-3, atol=1e-4)
    # last.pt keeps the replicated format minus the kernel and its momentum
    assert "kernel" not in b["head"] and set(b) == set(a)
    assert len(b["optimizer"]["state"]) == len(a["optimizer"]["state"]) - 1


@pytest.mark.slow
@pytest.mark.parametrize("head", ["head.partial_fc=false", "head.partial_fc=true"])
def test_two_ranks_accumulate_micro_batches(train_root, tmp_path, head):
    """train.grad_accum=2 on 2 ranks (DDP skips the all-reduce after the first micro-batch) trains, and
    the ranks end with the same backbone: the summed gradients were all-reduced at every step."""
    dump, run = tmp_path / "dump", tmp_path / "run"
    dump.mkdir()
    _torchrun(2, train_root, run, head, "train.grad_accum=2", dump=dump)
    first, second = (torch.load(dump / f"final_rank{r}.pt", weights_only=True) for r in range(2))
    for key, value in first.items():
        assert torch.equal(second[key], value), key
    assert _last(run)["step"] == STEPS and np.isfinite(_scalars(run, "train/loss")).all()


@pytest.mark.slow
def test_preempted_and_resumed_gives_the_same_weights(train_root, sharded_run, tmp_path):
    run = tmp_path / "resumed"
    _torchrun(2, train_root, run, "head.partial_fc=true", "train.max_steps=3")  # stopped mid-epoch
    assert _last(run)["step"] == 3
    _torchrun(2, train_root, run, "head.partial_fc=true")
    # bit for bit: last.pt keeps rank 0's queue, and rank 1 puts it back in its own order
    for tag in ("train/loss_cls", "train/loss_con"):
        np.testing.assert_array_equal(_scalars(run, tag), _scalars(sharded_run, tag), err_msg=tag)
    a, b = _last(sharded_run), _last(run)
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), f"backbone {key} after resume"
    for x, y in zip(_full_kernel(sharded_run, STEPS), _full_kernel(run, STEPS)):
        assert torch.equal(y, x)
    assert torch.equal(b["head"]["sample_step"], a["head"]["sample_step"])
    # the step-3 shards were no epoch end: pruned once last.pt of step 4 was written
    assert sorted(p.name for p in (run / "checkpoints" / shards.SHARDS).iterdir()) == [
        "step_000000002",
        "step_000000004",
    ]


@pytest.mark.slow
def test_resume_on_one_rank_reshards_kernel_and_momentum(train_root, sharded_run, tmp_path):
    # the 2-rank run's epoch end at step 2 (epoch_1.pt and its shards), continued by one process
    kernel, momentum = _full_kernel(sharded_run, 2)
    run = tmp_path / "one"
    trainer = Trainer(
        load_config(
            None,
            [
                f"data.root={train_root}",
                f"run_dir={run}",
                *ARGS,
                "head.partial_fc=true",
                f"train.resume={sharded_run / 'checkpoints' / 'epoch_1.pt'}",
            ],
        )
    )
    try:
        assert (trainer.step, trainer.epoch) == (2, 1)
        assert torch.equal(trainer.model.head.kernel.detach(), kernel)
        assert torch.equal(trainer.optimizer.state[trainer.model.head.kernel]["momentum_buffer"], momentum)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(LR * 0.1)  # the milestone passed (gamma)
        assert trainer.train() == 0
    finally:
        trainer.close()
    # on one rank the global batch is 4 images, not 8: its own curve from step 3 on, from the saved state
    assert _last(run)["step"] == STEPS and len(_scalars(run, "train/loss")) == 2
    assert _full_kernel(run, STEPS)[0].shape == kernel.shape


@pytest.mark.slow
def test_resume_on_four_ranks_reshards_kernel_and_momentum(train_root, sharded_run, tmp_path):
    kernel, momentum = _full_kernel(sharded_run, 2)
    run, dump = tmp_path / "four", tmp_path / "dump"
    dump.mkdir()
    _torchrun(
        4,
        train_root,
        run,
        "head.partial_fc=true",
        f"train.resume={sharded_run / 'checkpoints' / 'epoch_1.pt'}",
        dump=dump,
    )
    parts = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(4)]
    assert [p["step"] for p in parts] == [2] * 4
    assert [p["class_start"] for p in parts] == [shard_range(kernel.shape[1], r, 4)[0] for r in range(4)]
    assert torch.equal(torch.cat([p["kernel"] for p in parts], 1), kernel)
    assert torch.equal(torch.cat([p["momentum"] for p in parts], 1), momentum)
    manifest = json.loads((shards.shard_dir(run / "checkpoints", STEPS) / "manifest.json").read_text())
    assert manifest["world_size"] == 4 and _last(run)["step"] == STEPS


def _head(num_classes: int, rank: int, world: int) -> PartialFCHead:
    comm = SingleProcess()
    comm.rank, comm.world_size = rank, world  # only the slice bookkeeping is used here
    return PartialFCHead("adaface", num_classes, comm, embedding_size=8)


@pytest.mark.parametrize("new_world", [1, 2, 5])
def test_shards_of_three_ranks_reshard_to_any_world(tmp_path, new_world):
    c = 23
    full = torch.randn(8, c, generator=torch.Generator().manual_seed(0))
    full_m = torch.randn(8, c, generator=torch.Generator().manual_seed(1))
    ranges = [shard_range(c, r, 3) for r in range(3)]
    for r, (start, n) in enumerate(ranges):
        head = _head(c, r, 3)
        head.kernel.data.copy_(full[:, start : start + n])
        shards.write_shard(tmp_path, 7, head, full_m[:, start : start + n])
    shards.write_manifest(tmp_path, 7, _head(c, 0, 3), keep=None, ranges=ranges)
    manifest = shards.read_manifest(tmp_path, 7, c, tmp_path / "last.pt")
    got = [shards.load_slice(tmp_path, manifest, *shard_range(c, r, new_world)) for r in range(new_world)]
    assert torch.equal(torch.cat([k for k, _ in got], 1), full)
    assert torch.equal(torch.cat([m for _, m in got], 1), full_m)


def test_shard_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.*cannot be read"):
        shards.read_manifest(tmp_path, 3, 10, tmp_path / "last.pt")
    head = _head(10, 0, 1)
    shards.write_shard(tmp_path, 3, head, None)
    shards.write_manifest(tmp_path, 3, head, keep="epoch", ranges=[(0, 10)])
    with pytest.raises(CheckpointError, match="holds 10 classes, this run's data has 11"):
        shards.read_manifest(tmp_path, 3, 11, tmp_path / "last.pt")
    (shards.shard_dir(tmp_path, 3) / "rank_0.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="rank_0.pt' cannot be loaded"):
        shards.load_slice(tmp_path, shards.read_manifest(tmp_path, 3, 10, tmp_path / "last.pt"), 0, 10)


def test_prune_keeps_the_current_step_epoch_ends_and_the_current_best(tmp_path):
    head = _head(10, 0, 1)
    for step, keep in ((2, None), (3, "epoch"), (4, "best"), (5, "best"), (6, None)):
        shards.write_shard(tmp_path, step, head, None)
        shards.write_manifest(tmp_path, step, head, keep=keep, ranges=[(0, 10)])
    shards.write_shard(tmp_path, 7, head, None)  # a save that died before its manifest
    (shards.shard_dir(tmp_path, 1)).mkdir()  # a manifest written before keep reasons: keep = true
    (shards.shard_dir(tmp_path, 1) / "manifest.json").write_text('{"keep": true}')
    shards.prune_shards(tmp_path, keep_step=6, best_step=5)  # step 4's best was superseded by step 5's
    left = sorted(p.name for p in (tmp_path / shards.SHARDS).iterdir())
    assert left == ["step_000000001", "step_000000003", "step_000000005", "step_000000006"]
    with pytest.raises(ValueError, match="keep must be None or one of"):
        shards.write_manifest(tmp_path, 8, head, keep="maybe", ranges=[(0, 10)])


def test_initial_proxies_do_not_depend_on_the_world_size():
    c = 2 * 4096 + 300  # three seeded blocks
    full = initial_proxies(c, 16, 5, 0, c)
    torch.testing.assert_close(full.norm(dim=0), torch.ones(c))
    for world in (2, 3, 7):
        parts = [initial_proxies(c, 16, 5, *shard_range(c, r, world)) for r in range(world)]
        assert torch.equal(torch.cat(parts, 1), full)
    assert not torch.equal(initial_proxies(c, 16, 6, 0, c), full)


def test_settings_the_sharded_head_refuses():
    with pytest.raises(ConfigError, match="head.sample_rate=0.3 needs head.partial_fc=true"):
        check_partial_fc(load_config(None, ["head.sample_rate=0.3"]), "fp32")
    with pytest.raises(ConfigError, match=r"head.sample_rate must lie in \(0, 1\]"):
        load_config(None, ["head.partial_fc=true", "head.sample_rate=0"])
    cfg = load_config(None, ["head.partial_fc=true", "optim.grad_clip=5"])
    with pytest.raises(ConfigError, match="optim.grad_clip=5.0 cannot be combined with head.partial_fc=true"):
        check_partial_fc(cfg, "fp32")
    with pytest.raises(ConfigError, match="train.precision resolves to fp16"):
        check_partial_fc(load_config(None, ["head.partial_fc=true"]), "fp16")
    check_partial_fc(load_config(None, ["head.partial_fc=true", "head.sample_rate=0.3"]), "bf16")


@pytest.mark.slow
def test_evaluation_and_export_load_the_backbone_of_a_sharded_run(sharded_run):
    # python -m qgface.eval reads the checkpoint's layout, then (as tools/export_onnx.py and the
    # Recognizer) loads it with load_backbone: the backbone only, no kernel shards needed
    info = checkpoint_info(sharded_run / "checkpoints" / "last.pt")
    assert (info["layout"], info["step"], info["backbone"]) == ("qgface", STEPS, "ir_tiny")
    model = load_backbone(sharded_run / "checkpoints" / "last.pt")
    for key, value in _last(sharded_run)["model"].items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_profile_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    if path.stem in ("webface4m", "webface12m", "webface42m", "glint360k"):
        assert cfg.head.partial_fc and cfg.model.backbone == "ir101" and cfg.optim.epochs == 20
        assert cfg.head.sample_rate == (0.2 if path.stem in ("webface12m", "webface42m") else 1.0)


@pytest.mark.slow
def test_one_process_trains_with_class_sampling(train_root, tmp_path):
    run = tmp_path / "sampled"
    cfg = load_config(
        None,
        [
            f"data.root={train_root}",
            f"run_dir={run}",
            *ARGS,
            "head.partial_fc=true",
            "head.sample_rate=0.5",
            "train.max_steps=2",
        ],
    )
    trainer = Trainer(cfg)
    seen: list[torch.Tensor] = []
    step = trainer.train_step

    def record(views, labels, schedule):
        out = step(views, labels, schedule)
        seen.append((labels, trainer.model.head.last_sampled.clone()))
        return out

    trainer.train_step = record
    try:
        assert trainer.train() == 0
    finally:
        trainer.close()
    for labels, sampled in seen:  # 12 classes at rate 0.5: 6, or more when the batch holds more classes
        assert set(labels.tolist()) <= set(sampled.tolist())
        assert len(sampled) == max(6, len(set(labels.tolist())))
    assert int(_last(run)["head"]["sample_step"]) == 2
    assert all(np.isfinite(_scalars(run, "train/loss")))


@pytest.mark.slow
def test_resuming_across_the_partial_fc_setting_is_refused(train_root, tmp_path):
    run = tmp_path / "replicated"
    base = [f"data.root={train_root}", *ARGS, "train.max_steps=1"]
    trainer = Trainer(load_config(None, [*base, f"run_dir={run}"]))
    try:
        assert trainer.train() == 0
    finally:
        trainer.close()
    last = run / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="holds the whole kernel .written with head.partial_fc=false"):
        Trainer(load_config(None, [*base, f"run_dir={tmp_path / 'b'}", "head.partial_fc=true", f"train.resume={last}"]))
    # a sharded run's last.pt copied without its head_shards/ folder
    trainer = Trainer(load_config(None, [*base, f"run_dir={tmp_path / 'c'}", "head.partial_fc=true"]))
    try:
        assert trainer.train() == 0
    finally:
        trainer.close()
    lonely = tmp_path / "copy" / "last.pt"
    lonely.parent.mkdir()
    lonely.write_bytes((tmp_path / "c" / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match="head_shards/ folder along with last.pt"):
        Trainer(
            load_config(None, [*base, f"run_dir={tmp_path / 'd'}", "head.partial_fc=true", f"train.resume={lonely}"])
        )
