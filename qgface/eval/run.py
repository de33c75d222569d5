"""Evaluate one checkpoint on one benchmark: ``<output_dir>/<checkpoint stem>/<benchmark>.json`` (docs/method.md §7-8).

Order: protocol files -> compressed ``.rec`` (made when missing, refused when stale) -> backbone ->
fused embeddings -> protocol metrics -> JSON (atomic). The JSON holds the metrics (percentages), the
curves for plots, the protocol sizes, the checkpoint path and step, the data root and the source read,
and the time of each stage. A failure can be recorded with :func:`write_failure` so the aggregation
can tell a failed benchmark from one never run.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qgface.atomic import atomic_write_text
from qgface.config import Config, config_with_overrides, load_config
from qgface.eval.benchmarks import BENCHMARK_NAMES, make_benchmark
from qgface.eval.compress import open_source
from qgface.eval.embed import embed_benchmark
from qgface.models import load_backbone
from qgface.models.io import CheckpointContents, read_checkpoint
from qgface.models.onnx_backbone import OnnxBackbone

__all__ = [
    "RESULT_VERSION",
    "checkpoint_info",
    "checkpoints_to_evaluate",
    "default_output_dir",
    "eval_data_root",
    "evaluate",
    "resolve_benchmark",
    "resolve_config",
    "result_path",
    "write_failure",
]

log = logging.getLogger(__name__)

RESULT_VERSION = 1


def resolve_config(
    checkpoint: str | Path | None, config_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> Config:
    """``--config``; else ``config.yaml`` of the run two levels above ``<run>/checkpoints/<ckpt>``; else
    the checkpoint's ``config`` entry; else the defaults. Overrides apply last in every case."""
    if config_path is None and checkpoint is not None:
        ckpt = Path(checkpoint)
        run_config = ckpt.resolve().parent.parent / "config.yaml"
        if ckpt.resolve().parent.name == "checkpoints" and run_config.is_file():
            config_path = run_config
        elif ckpt.is_file() and isinstance(saved := checkpoint_info(ckpt).get("config"), dict):
            return config_with_overrides(saved, overrides, source=f"{ckpt} (config entry)")
    return load_config(config_path, overrides)


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """``layout`` (qgface | lightning | state_dict | onnx), ``step``, ``epoch``, ``backbone``, ``config``
    of a checkpoint, from one read of the file."""
    if _is_onnx(path):  # an exported backbone (tools/export_onnx.py)
        return {"layout": "onnx", "step": None, "epoch": None, "backbone": None, "config": None}
    return _info(read_checkpoint(path))


def _is_onnx(path: str | Path) -> bool:
    return Path(path).suffix == ".onnx" and Path(path).is_file()


def _info(contents: CheckpointContents) -> dict[str, Any]:
    return {
        "layout": contents.layout,
        "step": contents.step,
        "epoch": contents.epoch,
        "backbone": contents.backbone if contents.layout == "qgface" else None,
        "config": contents.config,
    }


def resolve_benchmark(name: str, cfg: Config) -> str:
    """A benchmark name, or an index into ``cfg.eval.benchmarks`` (for Slurm array task ids)."""
    if name.isdigit():
        index = int(name)
        if index >= len(cfg.eval.benchmarks):
            raise ValueError(
                f"benchmark index {index} is out of range: eval.benchmarks has "
                f"{len(cfg.eval.benchmarks)} entries {cfg.eval.benchmarks}"
            )
        name = cfg.eval.benchmarks[index]
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")
    return name


def default_output_dir(checkpoint: str | Path) -> Path:
    """``<run>/eval`` for a checkpoint in ``<run>/checkpoints/``; any other checkpoint needs ``--output-dir``
    (a guessed folder would be created where the user never asked for one)."""
    ckpt = Path(checkpoint).resolve()
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file():
        return ckpt.parent.parent / "eval"
    raise ValueError(
        f"checkpoint {checkpoint} is not in a run's checkpoints/ folder; give --output-dir DIR for its results"
    )


def result_path(output_dir: str | Path, checkpoint: str | Path, benchmark: str) -> Path:
    """``<output_dir>/<checkpoint file stem>/<benchmark>.json``: one result per checkpoint and benchmark,
    so evaluating ``epoch_1.pt`` never replaces the result of ``last.pt``."""
    return Path(output_dir) / Path(checkpoint).stem / f"{benchmark}.json"


def checkpoints_to_evaluate(run_dir: str | Path, spec: str) -> list[Path]:
    """The checkpoints ``eval.checkpoints`` names for a run: ``last`` -> last.pt; ``best`` -> best.pt (kept
    by validation during training); ``all`` -> every ``epoch_<e>.pt`` in epoch order, plus last.pt when
    training stopped between epochs (its step is then no epoch's); else comma-separated names in
    ``<run>/checkpoints/`` or paths. Missing files raise."""
    folder = Path(run_dir) / "checkpoints"
    if spec in ("last", "best"):
        paths = [folder / f"{spec}.pt"]
    elif spec == "all":
        epochs = sorted(folder.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        paths = list(epochs)
        last = folder / "last.pt"
        if last.is_file() and (not epochs or checkpoint_info(last)["step"] != checkpoint_info(epochs[-1])["step"]):
            paths.append(last)
        if not paths:
            raise FileNotFoundError(f"eval.checkpoints=all: {folder} holds no epoch_<e>.pt or last.pt")
    else:
        paths = [
            Path(name.strip()) if Path(name.strip()).is_absolute() else folder / name.strip()
            for name in spec.split(",")
        ]
    for path in paths:
        if not path.is_file():
            hint = (
                " (best.pt is kept by validation during training: eval.every_steps > 0)"
                if path.name == "best.pt"
                else ""
            )
            raise FileNotFoundError(f"eval.checkpoints={spec}: checkpoint {path} does not exist{hint}")
    return paths


def eval_data_root(cfg: Config) -> Path:
    """``eval.data_root``, or the synthetic dataset (generated on first use)."""
    if cfg.eval.data_root:
        return Path(cfg.eval.data_root)
    from qgface.data.synthetic import ensure_synthetic  # generates data: only imported when needed

    return Path(ensure_synthetic(cfg))


def evaluate(
    checkpoint_path: str | Path,
    benchmark_name: str,
    cfg: Config,
    output_dir: str | Path | None = None,
    *,
    compress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint_path`` on ``benchmark_name``; writes and returns the result dict."""
    timings: dict[str, float] = {}
    started = tick = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[f"{stage}_s"] = round(now - tick, 3)
        tick = now

    name = resolve_benchmark(benchmark_name, cfg)
    output_dir = Path(output_dir) if output_dir else default_output_dir(checkpoint_path)
    # read once, and early: a bad checkpoint fails before any data is generated or compressed
    contents = None if _is_onnx(checkpoint_path) else read_checkpoint(checkpoint_path)
    info = checkpoint_info(checkpoint_path) if contents is None else _info(contents)
    data_root = eval_data_root(cfg)
    benchmark = make_benchmark(
        name,
        data_root,
        tinyface_aligned_dir=cfg.eval.tinyface_aligned_dir,
        scface_aligned_dir=cfg.eval.scface_aligned_dir,
        ijb_protocol=cfg.eval.ijb_protocol,
    )
    lap("protocol")
    source, source_desc = open_source(
        benchmark, cfg.eval.rec_dir or data_root, compress=compress, num_workers=cfg.eval.num_workers
    )
    lap("compress")
    model = (
        OnnxBackbone(checkpoint_path)
        if contents is None
        else load_backbone(
            checkpoint_path, name=cfg.model.backbone if contents.layout == "state_dict" else None, contents=contents
        )
    )
    del contents  # the weights are in the model now
    lap("load_model")
    embeddings, norms = embed_benchmark(
        model,
        benchmark,
        source,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.eval.num_workers,
        device=device,
        tf32=cfg.eval.tf32,
    )
    lap("embed")
    output = benchmark.evaluate(embeddings, norms)
    lap("metrics")
    timings["total_s"] = round(time.perf_counter() - started, 3)
    result = {
        "format_version": RESULT_VERSION,
        "status": "ok",
        "benchmark": name,
        "protocol": benchmark.protocol or None,
        "metrics": output.metrics,
        "sizes": benchmark.sizes(),
        "curves": output.curves,
        "checkpoint": str(Path(checkpoint_path).resolve()),
        "step": info["step"],
        "epoch": info["epoch"],
        "data_root": str(Path(data_root).resolve()),
        "source": source_desc,
        "device": str(device or ("cuda" if torch.cuda.is_available() else "cpu")),
        "timings": timings,
        "finished_at": _now(),
    }
    path = result_path(output_dir, checkpoint_path, name)
    atomic_write_text(path, json.dumps(result, indent=1))
    log.info("%s: %s -> %s", name, _summary(output.metrics), path)
    return result


def write_failure(output_dir: str | Path, benchmark: str, checkpoint: str | Path, error: str) -> Path:
    """Record a failed evaluation as :func:`result_path` with ``status: failed``."""
    path = result_path(output_dir, checkpoint, benchmark)
    atomic_write_text(
        path,
        json.dumps(
            {
                "format_version": RESULT_VERSION,
                "status": "failed",
                "benchmark": benchmark,
                "checkpoint": str(Path(checkpoint).resolve()),
                "error": error,
                "finished_at": _now(),
            },
            indent=1,
        ),
    )
    return path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _summary(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{k}={'empty' if v is None else f'{v:.2f}'}" for k, v in metrics.items() if not k.endswith("_std")
    )
