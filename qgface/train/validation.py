"""Validation during training and the best checkpoint (docs/method.md §7.9).

Every ``eval.every_steps`` steps and at the end of training, the backbone embeds the validation sets
(``eval.val_benchmarks``: hq, crlfw) in eval mode, every rank one contiguous shard
(:mod:`qgface.eval.sharded`), and rank 0 computes the metrics with the benchmark's own protocol
object, so the numbers are those ``python -m qgface.eval`` gives for a checkpoint of that step. They go
to TensorBoard as ``val/<benchmark>/<metric>`` and into one log line. When ``eval.best_metric``
improves (strictly), the trainer saves that step's checkpoint as ``best.pt`` and makes ``last.pt`` a
hard link to it, then writes ``best.json`` (metric, value, step); the best so far is part of the
checkpoint, so a resumed run remembers it.

No rank waits forever at a collective: the validation data is prepared on every rank in the
constructor, before the first step, and every failure is decided for all ranks at once (a gather of
each rank's error, or an all-reduced flag per rank), after which every rank raises the same
:class:`ValidationDataError`. A rank that compresses a benchmark (``qgface.eval.compress``) holds its
file lock while the others of the node wait on that lock, not at a collective; the first collective
comes only once each rank has its data.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qgface.atomic import atomic_write_text
from qgface.config import Config, ConfigError
from qgface.eval.benchmarks import Benchmark, make_benchmark
from qgface.eval.benchmarks.hq import CrossResolutionLFW, HQVerification
from qgface.eval.compress import open_source
from qgface.eval.embed import ImageSource
from qgface.eval.run import eval_data_root
from qgface.eval.sharded import embed_shard, gather_shards
from qgface.train import dist
from qgface.train.monitor import Monitor

__all__ = ["BestMetric", "ValidationDataError", "Validator", "best_metric_benchmark", "write_best_json"]

log = logging.getLogger(__name__)

METRIC_NAMES = {"hq": HQVerification.metric_names(), "crlfw": CrossResolutionLFW.metric_names()}
"""the metric keys of each benchmark eval.val_benchmarks may list (qgface.vocab.benchmarks.VALIDATION_BENCHMARKS)"""


class ValidationDataError(ConfigError):
    """Validation data is missing, stale or unreadable on some rank (raised on every rank alike)."""


def best_metric_benchmark(benchmarks: list[str], metric: str) -> str:
    """The benchmark of ``benchmarks`` whose results hold ``metric``; a ConfigError naming the choices if none.

    Spreads (``*_std``) are not offered: a checkpoint is chosen by a value where higher is better.
    """
    choices = {name: bench for bench in benchmarks for name in METRIC_NAMES[bench] if not name.endswith("_std")}
    if metric not in choices:
        raise ConfigError(
            f"eval.best_metric={metric!r} is not a metric of eval.val_benchmarks={benchmarks}; "
            f"choose one of {', '.join(choices)}"
        )
    return choices[metric]


@dataclass
class BestMetric:
    """The best value of one metric so far and the step it was reached at (None before the first)."""

    metric: str
    value: float | None = None
    step: int | None = None

    def offer(self, value: float, step: int) -> bool:
        """Keep ``value`` when it is the first or strictly higher (a tie keeps the earlier step)."""
        if self.value is not None and not value > self.value:
            return False
        self.value, self.step = float(value), int(step)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "step": self.step}


def write_best_json(folder: Path, best: BestMetric) -> None:
    """``<folder>/best.json``: the metric, value and step of ``best.pt`` (written atomically)."""
    atomic_write_text(folder / "best.json", json.dumps({**best.state_dict(), "checkpoint": "best.pt"}, indent=1))
    log.info("best.pt is step %d: %s = %.4f", best.step, best.metric, best.value)


class Validator:
    """Prepares the validation data (all ranks, before training) and runs validation when due."""

    def __init__(self, cfg: Config, info: dist.DistInfo) -> None:
        e = cfg.eval
        self.every_steps, self.info = e.every_steps, info
        self.batch_size, self.num_workers, self.tf32 = e.batch_size, e.num_workers, e.tf32
        self.best_benchmark = best_metric_benchmark(e.val_benchmarks, e.best_metric)  # before any data work
        self.best = BestMetric(e.best_metric)
        with self._own_random_stream():  # compressing iterates a DataLoader too
            self.sets = self._prepare(cfg)

    def _own_random_stream(self) -> AbstractContextManager:
        """A fork of torch's global RNG: building a DataLoader iterator draws a seed from that stream, and
        validation must leave the training's random numbers (dropout, exact resume) untouched."""
        device = self.info.device
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    def _prepare(self, cfg: Config) -> list[tuple[Benchmark, ImageSource]]:
        """Every rank opens (compressing when missing) each validation set; failures decided together."""
        sets, error = [], None
        try:
            root = eval_data_root(cfg)
            for name in cfg.eval.val_benchmarks:
                benchmark = make_benchmark(name, root)
                source, where = open_source(benchmark, cfg.eval.rec_dir or root, num_workers=self.num_workers)
                sets.append((benchmark, source))
                if self.info.is_main:
                    log.info("validation set %s: %d items from %s", name, len(benchmark.embed_items()), where)
        except Exception as exc:  # any failure: told to every rank below instead of leaving them waiting
            log.debug("preparing the validation data failed", exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
        failures = [(rank, message) for rank, message in enumerate(dist.gather_objects(error)) if message]
        if failures:
            rank, message = failures[0]
            raise ValidationDataError(
                f"validation data (eval.val_benchmarks={cfg.eval.val_benchmarks}, eval.data_root="
                f"{cfg.eval.data_root or '(synthetic)'}) failed on rank(s) {[r for r, _ in failures]}; rank {rank}: "
                f"{message}. Fix eval.data_root / eval.rec_dir, or set eval.every_steps=0"
            )
        return sets

    def due(self, step: int, finished: bool) -> bool:
        return finished or step % self.every_steps == 0

    def run(self, backbone: nn.Module, step: int, monitor: Monitor) -> bool:
        """Validate ``backbone`` at ``step`` on every rank; log; True when ``best`` improved (same on all ranks)."""
        started = time.perf_counter()
        device, was_training = self.info.device, backbone.training
        # every rank embeds with the model rank 0 saves: its BatchNorm statistics (DDP would copy them
        # at the next forward anyway, so training is unchanged)
        dist.broadcast_buffers(backbone)
        shards, error = [], None
        with self._own_random_stream():
            try:
                for benchmark, source in self.sets:
                    shards.append(
                        embed_shard(
                            backbone,
                            benchmark,
                            source,
                            self.info.rank,
                            self.info.world_size,
                            device=device,
                            batch_size=self.batch_size,
                            num_workers=self.num_workers,
                            tf32=self.tf32,
                        )
                    )
            except Exception as exc:  # decided below for every rank by one all-reduced flag per rank
                log.error(
                    "validation at step %d failed on rank %d: %s: %s",
                    step,
                    self.info.rank,
                    type(exc).__name__,
                    exc,
                    exc_info=True,
                )
                error = exc
            finally:
                backbone.train(was_training)
        failed = dist.any_rank(
            [
                torch.tensor(error is not None and r == self.info.rank, device=device)
                for r in range(self.info.world_size)
            ]
        )
        if any(failed):
            raise ValidationDataError(
                f"validation at step {step} failed on rank(s) {[r for r, bad in enumerate(failed) if bad]} "
                f"(that rank's log has the error{f': {type(error).__name__}: {error}' if error else ''}); "
                "last.pt holds the last step saved before it; fix the validation data or set eval.every_steps=0"
            )
        gathered = [
            gather_shards(rows, len(benchmark.embed_items())) for rows, (benchmark, _) in zip(shards, self.sets)
        ]
        metrics, error_text = None, None
        if self.info.is_main:  # one rank scores, so every rank keeps the same best step
            try:
                metrics = {b.name: b.evaluate(emb, norms).metrics for (emb, norms), (b, _) in zip(gathered, self.sets)}
            except Exception as exc:
                error_text = f"{type(exc).__name__}: {exc}"
        metrics, error_text = dist.broadcast_object((metrics, error_text))
        if error_text:
            raise ValidationDataError(f"validation at step {step}: computing the metrics failed: {error_text}")
        improved = self.best.offer(metrics[self.best_benchmark][self.best.metric], step)
        seconds = time.perf_counter() - started
        self._log(metrics, step, seconds, improved, monitor)
        return improved

    def _log(
        self,
        metrics: Mapping[str, Mapping[str, float | None]],
        step: int,
        seconds: float,
        improved: bool,
        monitor: Monitor,
    ) -> None:
        scalars = {
            f"val/{bench}/{name}": value
            for bench, values in metrics.items()
            for name, value in values.items()
            if value is not None
        }
        monitor.log({**scalars, "val/seconds": seconds}, step)
        shown = ", ".join(
            f"{name}={value:.2f}"
            for values in metrics.values()
            for name, value in values.items()
            if value is not None and not name.endswith("_std")
        )
        log.info(
            "validation at step %d (%.1f s on %d ranks): %s; best %s=%.4f at step %d%s",
            step,
            seconds,
            self.info.world_size,
            shown,
            self.best.metric,
            self.best.value,
            self.best.step,
            " (new best.pt)" if improved else "",
        )

    def state_dict(self) -> dict[str, Any]:
        """The best so far, for the trainer's checkpoint (key ``validation``)."""
        return self.best.state_dict()

    def load_state_dict(self, state: Mapping[str, Any] | None, path: str | Path) -> None:
        """Continue with the best of checkpoint ``path``; a checkpoint of another metric (or none) starts afresh."""
        if state is None or state.get("metric") != self.best.metric:
            if state is not None and state.get("value") is not None:
                log.warning(
                    "%s chose best.pt by %s; eval.best_metric=%s starts a new best",
                    path,
                    state.get("metric"),
                    self.best.metric,
                )
            return
        self.best = BestMetric(self.best.metric, state["value"], state["step"])
