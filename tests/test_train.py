"""End-to-end training on a tiny on-disk set: CLI run, exact resume, torchrun DDP, NaN stop, signals.

Everything runs the tiny backbone on the CPU (batch 8, queue 64, a handful of steps). ``head.t_alpha``
is raised so that the AdaFace norm statistics (which start at 0, docs/method.md §3) settle within a few
steps and the quality-guided contrastive term becomes active inside these short runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import qgface
from qgface.config import load_config
from qgface.data.synthetic import generate_training_set
from qgface.models import CheckpointError
from qgface.train import REQUEUE_EXIT_CODE
from qgface.train.components import FaceModel, param_groups
from qgface.train.engine import NonFiniteLossError, Trainer

REPO = Path(qgface.__file__).resolve().parents[1]
TINY = [
    "model.backbone=ir_tiny",
    "data.batch_size=8",
    "contrast.queue_size=64",
    "data.num_workers=0",
    "head.t_alpha=0.5",
    "train.log_every=1",
]


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    """A tiny synthetic set (12 identities x 6 images in InsightFace train.rec/.idx), generated once."""
    root = tmp_path_factory.mktemp("synthetic") / "set"
    generate_training_set(root, identities=12, images_per_identity=6, workers=1)
    return root


def _args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run_dir={run_dir}", *TINY, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _train(root: Path, run_dir: Path, *extra: str) -> int:
    trainer = Trainer(load_config(None, _args(root, run_dir, *extra)))
    try:
        return trainer.train()
    finally:
        trainer.close()


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def test_cli_trains_both_losses_and_writes_tensorboard(train_root, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qgface.train",
            str(REPO / "configs" / "tiny.yaml"),
            *_args(train_root, run, "optim.epochs=3", "optim.milestones=[10]"),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [v for _, v in _scalars(run, "train/loss")]
    assert len(losses) == 27  # 72 images / batch 8 = 9 steps per epoch
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])
    assert max(v for _, v in _scalars(run, "train/contrast_active_fraction")) > 0
    assert min(v for _, v in _scalars(run, "train/loss_con")) > 0
    assert [v for _, v in _scalars(run, "train/lr")] == pytest.approx([0.1] * 27)

    acc = EventAccumulator(str(run / "tb"), size_guidance={"histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "train/loss_cls",
        "train/norm_mean",
        "train/norm_std",
        "train/dynamic_margin",
        "train/images_per_s",
        "train/contrast_weight",
        "train/quality_scale",
    ):
        assert tag in tags["scalars"]
    assert {"train/feature_norm_H", "train/feature_norm_L", "train/positive_cosine"} <= set(tags["histograms"])
    assert [e.step for e in acc.Images("train/pairs_L_H")] == [1, 10, 19, 27]  # each epoch, and the end
    assert "train/norm_vs_similarity" in tags["images"]

    last = _last(run)
    assert (last["step"], last["epoch"], last["batch_in_epoch"], last["finished"]) == (27, 3, 0, True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_1.pt",
        "epoch_2.pt",
        "epoch_3.pt",
        "last.pt",
    ]
    # each epoch end wrote last.pt once; epoch_3.pt is that file (a hard link), the earlier epochs other files
    ckdir = run / "checkpoints"
    assert os.path.samefile(ckdir / "epoch_3.pt", ckdir / "last.pt")
    assert not os.path.samefile(ckdir / "epoch_2.pt", ckdir / "last.pt")
    assert torch.load(ckdir / "epoch_2.pt", weights_only=True)["step"] == 18
    assert load_config(run / "config.yaml").data.batch_size == 8
    assert last["config"]["model"]["backbone"] == "ir_tiny" and last["queue"] is not None


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(train_root, tmp_path, workers):
    # 3 steps per epoch, lr drop after epoch 0: the resumed part crosses an epoch end and a milestone
    sched = [
        "optim.epochs=2",
        "train.steps_per_epoch=3",
        "optim.milestones=[1]",
        f"data.num_workers={workers}",
        "data.batch_size=4",
    ]
    assert _train(train_root, tmp_path / "a", *sched) == 0
    assert _train(train_root, tmp_path / "b", *sched, "train.max_steps=2") == 0
    assert _last(tmp_path / "b")["step"] == 2
    assert _train(train_root, tmp_path / "b", *sched) == 0  # resume=auto continues from last.pt

    for tag in ("train/loss", "train/loss_cls", "train/loss_con"):
        a, b = _scalars(tmp_path / "a", tag), _scalars(tmp_path / "b", tag)
        assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
        np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=0, atol=1e-6)
    a, b = _last(tmp_path / "a"), _last(tmp_path / "b")
    for part in ("model", "head", "queue"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)


def test_torchrun_two_ranks_share_the_gathered_queue(train_root, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys, torch\n"
        "from qgface.config import load_config\n"
        "from qgface.train.engine import Trainer\n"
        "trainer = Trainer(load_config(None, sys.argv[2:]))\n"
        "try:\n    assert trainer.train() == 0\nfinally:\n    trainer.close()\n"
        "torch.save(trainer.queue.state_dict(), f'{sys.argv[1]}/queue{trainer.dist.rank}.pt')\n"
        "params = {k: p.detach() for k, p in trainer.model.named_parameters()}\n"
        "torch.save(params, f'{sys.argv[1]}/params{trainer.dist.rank}.pt')\n"
    )
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
            *_args(train_root, run, "data.batch_size=4", "train.max_steps=3"),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    q0, q1 = (torch.load(tmp_path / f"queue{r}.pt") for r in (0, 1))
    # 3 steps x 2 ranks x 2 views x batch 4 keys; every rank holds all of them (own rank's first)
    assert int(q0["ptr"]) == int(q1["ptr"]) == 48 and int((q0["labels"] >= 0).sum()) == 48

    def rows(q):
        filled = q["labels"] >= 0
        return sorted(zip(q["labels"][filled].tolist(), map(tuple, q["keys"][filled].tolist())))

    assert rows(q0) == rows(q1)
    assert not torch.equal(q0["keys"], q1["keys"])  # ... in a rank-specific slot order
    assert float(q0["dynamic_margin"]) == float(q1["dynamic_margin"])
    p0, p1 = (torch.load(tmp_path / f"params{r}.pt") for r in (0, 1))
    assert "head.kernel" in p0 and all(torch.equal(p0[k], p1[k]) for k in p0)  # DDP kept the replicas equal
    assert _last(run)["step"] == 3 and len(_last(run)["rng"]) == 2


def test_non_finite_loss_stops_before_the_step_and_keeps_last_pt(train_root, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 2 .*loss_cls=.*loss_con=.*nothing was saved after step 1"):
        _train(train_root, tmp_path, "optim.lr=1.0e+30", "train.checkpoint_every=1", "train.max_steps=5")
    last = _last(tmp_path)
    assert (last["step"], last["finished"]) == (1, False)
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    # a rerun with another backbone is refused by name and leaves the run's config.yaml alone
    with pytest.raises(CheckpointError, match=r"last\.pt.*holds backbone 'ir_tiny'.*ir18"):
        Trainer(load_config(None, _args(train_root, tmp_path, "model.backbone=ir18")))
    assert load_config(tmp_path / "config.yaml").model.backbone == "ir_tiny"


def test_sigusr2_saves_exits_75_and_the_rerun_resumes(train_root, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "qgface.train",
        *_args(train_root, tmp_path, "data.batch_size=4", "train.checkpoint_every=1", "train.max_steps=500"),
    ]
    log_file = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while we wait
    with open(log_file, "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    last = tmp_path / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first checkpoint proves the loop (and its signal handlers) runs
    proc.send_signal(signal.SIGUSR2)
    proc.wait(timeout=300)
    err = log_file.read_text()
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-3000:]
    assert "SIGUSR2" in err
    stopped = _last(tmp_path)
    assert not stopped["finished"] and 1 <= stopped["step"] < 500
    assert _scalars(tmp_path, "train/loss")[-1][0] == stopped["step"]

    target = stopped["step"] + 2
    rerun = subprocess.run(
        [*cmd[:-1], f"train.max_steps={target}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {last}" in rerun.stderr
    done = _last(tmp_path)
    assert (done["step"], done["finished"]) == (target, True)
    again = subprocess.run(
        [*cmd[:-1], f"train.max_steps={target}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_param_groups_decay_everything_but_batchnorm():
    from qgface.losses import MarginHead
    from qgface.models import build_backbone

    model = FaceModel(build_backbone("ir_tiny"), MarginHead("adaface", 5))
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    bn = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert {id(p) for p in no_decay["params"]} == {id(p) for m in bn for p in m.parameters()}
    decayed = {id(p) for p in decay["params"]}
    assert id(model.head.kernel) in decayed
    assert id(model.backbone.input_layer[2].weight) in decayed  # PReLU, as in AdaFace
    assert len(decayed) + len(no_decay["params"]) == len(list(model.parameters()))


def test_queue_holding_few_steps_is_warned_about_and_the_default_holds_many(train_root, tmp_path, caplog):
    caplog.set_level("WARNING", logger="qgface.train.engine")
    short = Trainer(load_config(None, _args(train_root, tmp_path / "short", "contrast.queue_size=32")))
    short.close()
    assert short.queue.size == 32 and "holds 2.0 steps of 16 keys (fewer than 4)" in caplog.text
    caplog.clear()
    auto = Trainer(load_config(None, [*_args(train_root, tmp_path / "auto"), "contrast.queue_size=0"]))
    auto.close()
    assert auto.queue.size == 16384 and caplog.text == ""  # max(16384, 8 steps x 16 keys)
