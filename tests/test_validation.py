"""Validation during training (docs/method.md §7.9): sharded over real gloo ranks, the offline protocol's
numbers, val/ scalars, best.pt chosen by the best metric and remembered across resume, refusals.

The synthetic set has the smallest HQ sets 10-fold verification allows (10 pairs each: 100 hq images,
50 crlfw items), so one validation of the tiny backbone takes seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import qgface
from qgface.config import ConfigError, load_config
from qgface.data.synthetic import generate
from qgface.eval.aggregate import aggregate
from qgface.eval.benchmarks import make_benchmark
from qgface.eval.compress import open_source
from qgface.eval.embed import embed_benchmark
from qgface.eval.run import checkpoints_to_evaluate, evaluate
from qgface.eval.sharded import gather_shards, shard_bounds
from qgface.models import load_backbone
from qgface.train import sharded_checkpoint as shards
from qgface.train.engine import Trainer
from qgface.train.validation import BestMetric, best_metric_benchmark

REPO = Path(qgface.__file__).resolve().parents[1]
TINY = [
    "model.backbone=ir_tiny",
    "data.batch_size=4",
    "contrast.queue_size=64",
    "data.num_workers=0",
    "head.t_alpha=0.5",
    "train.log_every=1",
    "eval.num_workers=0",
    "eval.batch_size=64",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Training set (12 identities x 6 images) and every benchmark, HQ sets of 10 pairs; generated once."""
    path = tmp_path_factory.mktemp("valset") / "set"
    generate(
        path,
        identities=12,
        images_per_identity=6,
        eval_identities=4,
        hq_pairs=10,
        tinyface_probes=1,
        tinyface_gallery=1,
        tinyface_distractors=1,
        scface_subjects=2,
        ijb_templates=1,
        ijb_media=1,
        ijb_frames=1,
        ijb_max_pairs=10,
        workers=1,
    )
    return path


def _args(root: Path, run: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"eval.data_root={root}", f"run_dir={run}", *TINY, *extra]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ---------------------------------------------------------------------------------------- pieces
def test_shards_are_contiguous_cover_every_item_once_and_have_one_padded_size():
    for total, world in [(100, 3), (50, 3), (5, 4), (7, 7), (3, 5), (12, 2)]:
        bounds = [shard_bounds(total, r, world) for r in range(world)]
        assert [i for start, stop in bounds for i in range(start, stop)] == list(range(total))
        per_rank = -(-total // world)
        assert all(0 <= stop - start <= per_rank for start, stop in bounds)
    assert [shard_bounds(5, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]  # the last rank: padding only


def test_gather_without_a_group_drops_the_padding():
    rows = torch.zeros(4, 513)
    rows[:3, 0], rows[:3, 512] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([7.0, 8.0, 9.0])
    embeddings, norms = gather_shards(rows, total=3)
    assert embeddings.shape == (3, 512) and embeddings[:, 0].tolist() == [1, 2, 3] and norms.tolist() == [7, 8, 9]


def test_metric_names_are_the_keys_the_benchmarks_return(root):
    rng = np.random.default_rng(0)
    for name in ("hq", "crlfw"):
        benchmark = make_benchmark(name, root)
        n = len(benchmark.embed_items())
        emb = rng.standard_normal((n, 512)).astype(np.float32)
        metrics = benchmark.evaluate(emb / np.linalg.norm(emb, axis=1, keepdims=True), np.ones(n, np.float32)).metrics
        assert type(benchmark).metric_names() == list(metrics)


def test_best_metric_keeps_the_first_of_equal_values():
    best = BestMetric("hq_avg")
    assert best.offer(60.0, 1) and not best.offer(60.0, 2) and not best.offer(55.0, 3)
    assert best.offer(61.5, 4) and best.state_dict() == {"metric": "hq_avg", "value": 61.5, "step": 4}


# ---------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "override, words",
    [
        ("eval.val_benchmarks=[hq,tinyface]", ["eval.val_benchmarks", "'tinyface'", "hq, crlfw"]),
        ("eval.val_benchmarks=[hq,hq]", ["eval.val_benchmarks", "distinct"]),
        ("eval.every_steps=-5", ["eval.every_steps", ">= 0"]),
        ("eval.checkpoints=bestest", ["eval.checkpoints", "last, all, best"]),
    ],
)
def test_bad_validation_config_is_refused_naming_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert all(w in str(err.value) for w in words), err.value
    assert load_config(None, ["eval.every_steps=10", "eval.checkpoints=best"]).eval.checkpoints == "best"


def test_eval_checkpoints_best_names_best_pt_and_says_where_it_comes_from(tmp_path):
    with pytest.raises(FileNotFoundError, match="best.pt does not exist.*eval.every_steps > 0"):
        checkpoints_to_evaluate(tmp_path, "best")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"")
    assert (
        checkpoints_to_evaluate(tmp_path, "best")
        == checkpoints_to_evaluate(tmp_path, "best.pt")
        == [tmp_path / "checkpoints" / "best.pt"]
    )


def test_unknown_best_metric_is_refused_before_training_naming_the_choices(root, tmp_path):
    with pytest.raises(ConfigError) as err:
        best_metric_benchmark(["crlfw"], "hq_avg")
    assert "eval.best_metric='hq_avg'" in str(err.value) and "crlfw_8" in str(err.value)
    assert "crlfw_8_std" not in str(err.value)  # spreads do not choose a checkpoint
    assert best_metric_benchmark(["hq", "crlfw"], "crlfw_avg") == "crlfw"
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="eval.best_metric='lfw_acc'.*hq_avg"):
        Trainer(load_config(None, _args(root, run, "eval.every_steps=1", "eval.best_metric=lfw_acc")))
    assert not (run / "checkpoints").exists() and not (run / "tb").exists()


def _validator_worker(rank: int, world: int, init: str, root: str, out: str) -> None:
    """One rank of a real gloo group: a Validator whose data fails on rank 1 only, then one whose
    validation fails on rank 1 only (a corrupt record); writes what each rank raised."""
    import torch.distributed as tdist

    from qgface.train.dist import DistInfo
    from qgface.train.validation import ValidationDataError, Validator

    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    info = DistInfo(rank, rank, world, torch.device("cpu"), rank == 0, "gloo")
    seen = {}
    bad_root = root if rank == 0 else os.path.join(out, "no_such_folder")
    keys = ["eval.every_steps=1", "eval.val_benchmarks=[crlfw]", "eval.best_metric=crlfw_avg", *TINY]
    try:
        Validator(load_config(None, [*keys, f"eval.data_root={bad_root}"]), info)
    except ValidationDataError as exc:
        seen["prepare"] = str(exc)
    validator = Validator(load_config(None, [*keys, f"eval.data_root={root}"]), info)
    if rank == 1:

        class Corrupt:
            def load_bytes(self, index: int) -> bytes:
                return b"not an image"

        validator.sets[0] = (validator.sets[0][0], Corrupt())
    from qgface.models import build_backbone
    from qgface.train.monitor import Monitor

    try:
        validator.run(build_backbone("ir_tiny"), 5, Monitor())
    except ValidationDataError as exc:
        seen["run"] = str(exc)
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    tdist.destroy_process_group()


@pytest.mark.slow
def test_a_failure_on_one_rank_is_raised_on_every_rank_without_a_hang(root, tmp_path):
    world = 2
    # spawned ranks join the group through a file; a hang would time the join out, not pass
    context = mp.start_processes(
        _validator_worker,
        args=(world, f"file://{tmp_path / 'store'}", str(root), str(tmp_path)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=2):
        assert time.monotonic() < deadline, "a rank is still waiting: the failure was not shared"
    for rank in range(world):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "failed on rank(s) [1]" in seen["prepare"] and "no_such_folder" in seen["prepare"]
        assert "validation at step 5 failed on rank(s) [1]" in seen["run"]
        assert ("cannot decode" in seen["run"]) == (rank == 1)  # the failing rank names its error


# ---------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_validation_on_three_gloo_ranks_gives_the_offline_numbers(root, tmp_path):
    """3 ranks: 100 hq images and 50 crlfw items do not split evenly, so shards are padded."""
    script = tmp_path / "ddp_validate.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from qgface.config import load_config\n"
        "from qgface.eval.sharded import embed_shard, gather_shards\n"
        "from qgface.train.engine import Trainer\n"
        "trainer = Trainer(load_config(None, sys.argv[2:]))\n"
        "try:\n    assert trainer.train() == 0\nfinally:\n    trainer.close()\n"
        "benchmark, source = trainer.validator.sets[1]\n"
        "info = trainer.dist\n"
        "rows = embed_shard(trainer.model.backbone, benchmark, source, info.rank, info.world_size,\n"
        "                   device=info.device, batch_size=16, num_workers=0, tf32=False)\n"
        "emb, norms = gather_shards(rows, len(benchmark.embed_items()))\n"
        "np.save(f'{sys.argv[1]}/crlfw_rank{info.rank}.npy', np.concatenate([emb, norms[:, None]], 1))\n"
    )
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=3",
            str(script),
            str(tmp_path),
            *_args(root, run, "train.max_steps=1", "eval.every_steps=1"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(None, _args(root, run))
    scalars = _scalars(run)
    for name in ("hq", "crlfw"):
        offline = evaluate(run / "checkpoints" / "last.pt", name, cfg, tmp_path / "offline")
        assert offline["step"] == 1
        for metric, value in offline["metrics"].items():
            assert scalars[f"val/{name}/{metric}"] == [(1, pytest.approx(value, abs=1e-4))], metric
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["step"] == 1 and best["value"] == pytest.approx(scalars["val/hq/hq_avg"][0][1], abs=1e-4)
    assert os.path.samefile(run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt")

    # the gathered matrix is, on every rank, the single-process embedding in benchmark order
    benchmark = make_benchmark("crlfw", root)
    source, _ = open_source(benchmark, root)
    emb, norms = embed_benchmark(
        load_backbone(run / "checkpoints" / "last.pt"), benchmark, source, device="cpu", num_workers=0
    )
    for rank in range(3):
        gathered = np.load(tmp_path / f"crlfw_rank{rank}.npy")
        np.testing.assert_allclose(gathered[:, :-1], emb, rtol=0, atol=2e-5)
        np.testing.assert_allclose(gathered[:, -1], norms, rtol=2e-5)


@pytest.mark.slow
def test_best_pt_is_the_best_step_and_a_resumed_run_remembers_it(root, tmp_path):
    run = tmp_path / "run"
    folder = run / "checkpoints"
    extra = ["eval.every_steps=1", "eval.val_benchmarks=[hq]", "train.checkpoint_every=100"]

    def train(*more: str) -> Trainer:
        return Trainer(load_config(None, _args(root, run, *extra, *more)))

    first = train("train.max_steps=1")
    try:
        assert first.train() == 0
    finally:
        first.close()
    best = json.loads((folder / "best.json").read_text())
    assert torch.load(folder / "last.pt", weights_only=True)["validation"] == {
        k: best[k] for k in ("metric", "value", "step")
    }

    resumed = train("train.max_steps=3")  # continues from last.pt at step 1
    try:
        assert resumed.step == 1 and resumed.validator.best.state_dict() == {
            k: best[k] for k in ("metric", "value", "step")
        }
        assert resumed.train() == 0
    finally:
        resumed.close()

    values = _scalars(run)["val/hq/hq_avg"]
    assert [s for s, _ in values] == [1, 2, 3]
    best_step, best_value = max(values, key=lambda sv: (sv[1], -sv[0]))  # the first of the highest
    best = json.loads((folder / "best.json").read_text())
    assert (best["metric"], best["step"]) == ("hq_avg", best_step) and best["value"] == pytest.approx(
        best_value, abs=1e-4
    )
    assert torch.load(folder / "best.pt", weights_only=True)["step"] == best_step
    assert os.path.samefile(folder / "best.pt", folder / "last.pt") == (best_step == 3)
    assert set(_scalars(run)) >= {f"val/hq/{m}" for m in ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "lfw_std")}

    # validating (and resuming) left training untouched: the same losses and weights as a plain run
    plain = tmp_path / "plain"
    trainer = Trainer(load_config(None, _args(root, plain, "train.max_steps=3")))
    try:
        assert trainer.validator is None and trainer.train() == 0
    finally:
        trainer.close()
    assert _scalars(plain)["train/loss"] == _scalars(run)["train/loss"]
    validated, unvalidated = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (run, plain))
    assert all(torch.equal(value, unvalidated["model"][key]) for key, value in validated["model"].items())

    # the evaluation chain scores best.pt (eval.checkpoints=best) and shows it as the best step's row
    cfg = load_config(run / "config.yaml", ["eval.checkpoints=best", "eval.benchmarks=[hq]"])
    (path,) = checkpoints_to_evaluate(run, cfg.eval.checkpoints)
    assert path == folder / "best.pt"
    offline = evaluate(path, "hq", cfg)
    assert offline["metrics"]["hq_avg"] == pytest.approx(best_value, abs=1e-4)
    assert (run / "eval" / "best" / "hq.json").is_file()
    (row,) = aggregate(run, tensorboard=False).rows
    assert Path(row["checkpoint"]).name == "best.pt" and row["step"] == best_step


@pytest.mark.slow
def test_a_sharded_head_run_keeps_the_kernel_shards_of_last_pt_and_best_pt_only(root, tmp_path):
    """head.partial_fc: the shards of a superseded best are removed, best.pt's stay and it resumes."""
    run = tmp_path / "run"
    extra = ["head.partial_fc=true", "eval.every_steps=1", "eval.val_benchmarks=[hq]", "train.max_steps=4"]
    trainer = Trainer(load_config(None, _args(root, run, *extra)))
    try:
        assert trainer.train() == 0
    finally:
        trainer.close()
    folder = run / "checkpoints"
    best_step = json.loads((folder / "best.json").read_text())["step"]
    left = sorted(p.name for p in (folder / shards.SHARDS).iterdir())
    assert left == sorted({shards.shard_dir(folder, s).name for s in (best_step, 4)})
    resumed = Trainer(
        load_config(None, _args(root, tmp_path / "from_best", *extra, f"train.resume={folder / 'best.pt'}"))
    )
    try:
        assert resumed.step == best_step
    finally:
        resumed.close()
