"""The trainer: the joint objective of docs/method.md §5 under DDP, exact resume, stop on signals.

One process:        python -m qgface.train configs/tiny.yaml
One node, 8 GPUs:   torchrun --standalone --nproc_per_node=8 -m qgface.train configs/qgface.yaml data.root=DATA
Two nodes:          torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT
                    -m qgface.train ...

``Trainer(cfg).train()`` returns 0 when training is complete (``finished=True`` in last.pt) and
``REQUEUE_EXIT_CODE`` when a signal stopped it after saving last.pt. Resume is decided by the run
directory (``train.resume=auto``): a ``last.pt`` there is continued exactly, with the same batches,
RNG streams, queue, AdaFace statistics, optimiser, scheduler and scaler.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from qgface.config import Config, ConfigError
from qgface.data.images import to_network_input
from qgface.data.loader import build_train_loader
from qgface.history import record_config
from qgface.losses import ContrastOutput, qg_contrastive_loss
from qgface.losses.queue import as_held_by_rank
from qgface.models import CheckpointError
from qgface.train import checkpoint as ckpt
from qgface.train import dist
from qgface.train import sharded_checkpoint as shards
from qgface.train.components import build_model, build_optimizer, build_queue, step_counts, train_data_root
from qgface.train.determinism import configure_determinism
from qgface.train.monitor import ProgressReport, build_monitor, norm_similarity_heatmap, pair_grid, progress
from qgface.train.precision import build_autocast, build_scaler, resolve_precision
from qgface.train.schedule import EpochSchedule, epoch_schedule
from qgface.train.sharded_head import ShardedForward, check_partial_fc
from qgface.train.signals import REQUEUE_EXIT_CODE, StopFlag
from qgface.train.validation import Validator, write_best_json

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; raised before the optimiser step, so last.pt is the last good state."""


class StepOutput(NamedTuple):
    """What one optimiser step computed (losses and statistics as detached tensors, on the device) and
    decided (whether to stop); the loop logs, checkpoints and stops from it alone."""

    loss: torch.Tensor
    loss_cls: torch.Tensor
    loss_con: torch.Tensor
    contrast: ContrastOutput | None
    emb: torch.Tensor  # [V*B, D] detached, [H_1..H_B, L_1..L_B]
    norms: torch.Tensor  # [V*B, 1] detached
    stop: bool  # a stop signal arrived on some rank: every rank saves last.pt after this step and exits


def _merge_micro_outputs(outs: list[StepOutput], num_views: int) -> StepOutput:
    """One StepOutput for the whole batch: mean losses, rows back in the order [H_1..H_B, L_1..L_B]."""

    def mean(name: str) -> torch.Tensor:
        return torch.stack([getattr(o, name) for o in outs]).mean()

    def rows(name: str) -> torch.Tensor:
        parts = [getattr(o, name).chunk(num_views) for o in outs]  # each micro-batch: [H_micro, L_micro]
        return torch.cat([p[view] for view in range(num_views) for p in parts])

    contrast = None
    if outs[0].contrast is not None:
        contrast = ContrastOutput(*(torch.stack([o.contrast[i] for o in outs]).mean() for i in range(4)))
    stop = any(o.stop for o in outs)
    return StepOutput(mean("loss"), mean("loss_cls"), mean("loss_con"), contrast, rows("emb"), rows("norms"), stop)


class Trainer:
    """Builds everything from the config; ``train()`` runs (or continues) the schedule.

    Its state is the counters ``epoch`` / ``step`` / ``batch_in_epoch`` and the modules, optimiser,
    scheduler and scaler; ``state_dict()`` / ``load_state_dict()`` turn it into a checkpoint and back.
    Each epoch's schedules are a value (:class:`EpochSchedule`) handed to every step, and a step
    returns all it decided (:class:`StepOutput`, including whether to stop).
    """

    def __init__(self, cfg: Config, config_source: str = "python -m qgface.train", allow_changes: bool = False) -> None:
        """``config_source`` and ``allow_changes`` go to ``qgface.history.record_config``: a continued
        run refuses config changes that change what is trained unless ``allow_changes``."""
        self.cfg = cfg
        configure_determinism(cfg.train.deterministic)  # before any CUDA work (cuBLAS reads its env once)
        self.dist = dist.init_distributed()
        self.device = self.dist.device
        seed = cfg.seed + self.dist.rank  # per-rank streams (dropout); DDP broadcasts rank 0's weights
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        self.run_dir = cfg.resolved_run_dir()

        # ---- data (docs/method.md §2)
        root = train_data_root(cfg)
        self.loader, self.sampler, dataset = build_train_loader(cfg, root, self.dist.rank, self.dist.world_size)
        self.num_views = dataset.num_views
        self.epoch_steps, self.total_steps = step_counts(cfg, self.sampler.per_rank, root)
        self.world_keys = self.num_views * cfg.data.batch_size * self.dist.world_size  # keys one step enqueues

        # ---- model and losses (docs/method.md §1, §3, §4)
        self.channels_last = cfg.train.channels_last and self.device.type == "cuda"
        self.model = build_model(cfg, dataset.num_classes, self.device, self.channels_last)
        t = cfg.train
        replicated = self.model.backbone if cfg.head.partial_fc else self.model  # the sharded kernel stays out of DDP
        self.ddp = None
        if self.dist.world_size > 1:
            # DDP's static graph crashes when a micro-batch skips the all-reduce (PyTorch issue 143580)
            static = t.static_graph and t.grad_accum == 1
            if t.static_graph and not static and self.dist.is_main:
                log.info("train.grad_accum=%d: DDP runs without train.static_graph", t.grad_accum)
            self.ddp = dist.wrap_ddp(replicated, self.device, static_graph=static, compression=t.grad_compression)
        wrapped = self.ddp if self.ddp is not None else replicated
        # what the step calls: (emb, norms, loss_cls, g_hat) of the whole model
        self.step_model = ShardedForward(wrapped, self.model.head) if cfg.head.partial_fc else wrapped
        self.queue = build_queue(
            cfg, self.num_views, self.world_keys, self.dist.world_size, self.dist.is_main, self.device
        )

        # ---- optimiser, schedule, precision (docs/method.md §5)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, self.device)
        self.precision = resolve_precision(t.precision, self.device)
        check_partial_fc(cfg, self.precision)
        self.autocast = build_autocast(self.precision, self.device)
        self.scaler = build_scaler(self.precision, self.device)

        # ---- validation data, on every rank before the first step (docs/method.md §7.9)
        self.validator = Validator(cfg, self.dist) if cfg.eval.every_steps else None

        # ---- counters, resume, monitoring
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.stop = StopFlag()
        self._resume()
        if self.dist.is_main:  # after the resume checks, so a mismatched rerun leaves the run's config alone
            record_config(self.run_dir, cfg, self.step, source=config_source, allow_training_changes=allow_changes)
        self.monitor = build_monitor(self.run_dir, self.dist.is_main, self.step)
        self._bar = None
        self._last_log = (time.perf_counter(), self.step)

    # ------------------------------------------------------------------ the step (docs/method.md §5)
    def current_schedule(self) -> EpochSchedule:
        """The schedules of the epoch the trainer is in (docs/method.md §3, §5)."""
        return epoch_schedule(self.epoch, self.cfg, self.num_views, self.world_keys)

    def train_step(self, views: torch.Tensor, labels: torch.Tensor, schedule: EpochSchedule) -> StepOutput:
        """One optimiser step on a batch of ``views`` [B, V, ...] under the epoch's ``schedule``."""
        views = to_network_input(views.to(self.device, non_blocking=True))  # uint8 over the bus, float here
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        # train.grad_accum micro-batches, gradients summed; DDP all-reduces only after the last one
        micro = self.cfg.train.grad_accum
        outs = []
        for i, (v_i, y_i) in enumerate(zip(views.chunk(micro), labels.chunk(micro))):
            last = i == micro - 1
            with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                outs.append(self._forward_backward(v_i, y_i, 1.0 / micro, schedule))
        # optional clipping (on unscaled gradients), step (a no-op scaler outside fp16)
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return outs[0] if micro == 1 else _merge_micro_outputs(outs, views.shape[1])

    def _forward_backward(
        self, views: torch.Tensor, labels: torch.Tensor, weight: float, schedule: EpochSchedule
    ) -> StepOutput:
        """One (micro-)batch: the loss of docs/method.md §5, its checks, and ``weight`` x its scaled backward."""
        b, v = views.shape[:2]
        # §2: the views as one batch [H_1..H_B, L_1..L_B], labels duplicated
        x = views.transpose(0, 1).reshape(v * b, *views.shape[2:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # §1 + §3: backbone under autocast -> (e, n) -> AdaFace margin + QS, cross-entropy in fp32
        with self.autocast:
            emb, norms, loss_cls, g_hat = self.step_model(x, labels.repeat(v), schedule.quality_scale)
        # §4: quality-guided contrast of q = L against k = H and the queue
        contrast, queue_ok = None, torch.ones((), dtype=torch.bool, device=self.device)
        if schedule.contrast_weight > 0:
            contrast, queue_ok = self._contrast(emb, g_hat, labels, schedule.queue_size)
        loss_con = contrast.loss if contrast is not None else torch.zeros((), device=self.device)
        loss = loss_cls + schedule.contrast_weight * loss_con
        # the step's only host read of its flags (besides the queue view's nonzero and fp16's inf check):
        # one all-reduce, next to the queue's all-gathers and DDP's gradient all-reduce, tells every rank
        # of a non-finite loss, a queue too small for the step's keys, or a stop signal on any rank
        # (the flags are built on the device: a tensor made from a host value would wait for the GPU)
        signalled = torch.full((), self.stop.requested, dtype=torch.bool, device=self.device)
        bad, queue_short, stop = dist.any_rank([~torch.isfinite(loss), ~queue_ok, signalled])
        if queue_short:
            raise ConfigError(
                f"the effective contrast queue at epoch {self.epoch} ({schedule.queue_size} keys) is smaller "
                f"than one step's {self.world_keys} gathered keys; raise contrast.queue_size"
            )
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step + 1} (epoch {self.epoch}, batch {self.batch_in_epoch}); "
                f"terms on rank {self.dist.rank}: loss={loss.item():.6g}, loss_cls={loss_cls.item():.6g}, "
                f"loss_con={loss_con.item():.6g} (weight {schedule.contrast_weight}); nothing was saved after step "
                f"{self.step}. Lower optim.lr or set optim.grad_clip"
            )
        self.scaler.scale(loss * weight).backward()
        return StepOutput(
            loss.detach(), loss_cls.detach(), loss_con.detach(), contrast, emb.detach(), norms.detach(), stop
        )

    def _contrast(
        self, emb: torch.Tensor, g_hat: torch.Tensor, labels: torch.Tensor, queue_size: int
    ) -> tuple[ContrastOutput, torch.Tensor]:
        """docs/method.md §4: enqueue both views of every rank (own first) BEFORE the loss, then the loss
        against the ``queue_size`` newest keys.

        Also returns a 0-dim bool tensor: does the queue's current view hold this step's keys."""
        c, b = self.cfg.contrast, labels.shape[0]
        # the proxies of the queued classes: kernel columns, or gathered from their owners when sharded
        kernel = self.model.head.proxies if self.cfg.head.partial_fc else self.model.head.kernel
        k, q = emb[:b], emb[b:]  # k = H views, q = L views
        local_slots = self.queue.enqueue(emb.detach(), labels.repeat(2), kernel)
        queue_keys, queue_labels = self.queue.current(kernel, queue_size)
        # [B, 2]: H, L; whether the view holds them is checked with the step's other flags (until
        # then a missing slot points at row 0 rather than out of bounds)
        own_index = self.queue.index_in_current(local_slots, queue_size, check=False).clamp_min(0).reshape(2, b).t()
        margin = {"none": 0.0, "static": c.margin, "dynamic": self.queue.dynamic_margin.clone()}[c.margin_mode]
        out = qg_contrastive_loss(
            q,
            k,
            queue_keys,
            g_hat[b:],
            g_hat[:b],
            q_labels=labels,
            queue_labels=queue_labels,
            s=c.s,
            threshold=c.threshold,
            method=c.method,
            scale_range=c.scale_range,
            select=c.select,
            margin=margin,
            mask_same_class=c.mask_same_class,
            detach_pos=c.detach_pos,
            rescale=c.rescale,
            own_index=own_index,
            return_stats=True,
        )
        # the EMA moves with the mean over ranks, so every rank keeps the same margin
        gap = dist.all_reduce_mean(torch.stack([out.pos_cos, out.hardest_neg_cos]))
        self.queue.update_dynamic_margin(gap[0], gap[1])
        return out, self.queue.holds_slots(local_slots, queue_size)

    # ------------------------------------------------------------------ the loop
    def train(self) -> int:
        """Run until the schedule is done (0) or a stop signal arrived (``REQUEUE_EXIT_CODE``)."""
        if self.step >= self.total_steps:
            log.info(
                "%s: training already complete (%d of %d steps); nothing to do",
                self.run_dir,
                self.step,
                self.total_steps,
            )
            return 0
        log.info(
            "training %s for %d steps (%d per epoch, %d epochs), from step %d on %s x%d in %s",
            self.cfg.model.backbone,
            self.total_steps,
            self.epoch_steps,
            self.cfg.optim.epochs,
            self.step,
            self.device,
            self.dist.world_size,
            self.precision,
        )
        self._bar = progress(self.total_steps, self.step, self.dist.is_main)
        self._progress = ProgressReport(self.total_steps, self.step)
        with self.stop:
            while True:
                schedule = self.current_schedule()
                for i, (views, labels) in enumerate(self._epoch_batches()):
                    out = self.train_step(views, labels, schedule)
                    self.step += 1
                    self.batch_in_epoch += 1
                    self._bar.update()
                    finished = self.step >= self.total_steps
                    # images on each epoch's first step and on the last one, so the final model is shown
                    self._log(out, views, schedule, images=i == 0 or finished)
                    epoch_done = self.batch_in_epoch == self.epoch_steps
                    if epoch_done:
                        self.scheduler.step()
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    # validation before the save, so last.pt holds the best so far; a new best is saved now
                    best = self._validate(finished, out.stop)
                    if epoch_done or finished or out.stop or best or self.step % self.cfg.train.checkpoint_every == 0:
                        self._save(epoch_done, best)
                    if finished:
                        log.info("training complete at step %d", self.step)
                        return 0
                    if out.stop:
                        log.warning(
                            "stopped at step %d after a signal; last.pt saved, exit %d to be requeued",
                            self.step,
                            REQUEUE_EXIT_CODE,
                        )
                        return REQUEUE_EXIT_CODE

    def _epoch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The remaining batches of the current epoch."""
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch, self.cfg.data.batch_size)
        # creating the iterator draws the workers' base seed from torch's global stream; forking keeps
        # that draw out of the training stream, so a resumed run's dropout draws match (exact resume)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            batches = iter(self.loader)
        return itertools.islice(batches, self.epoch_steps - self.batch_in_epoch)

    def _validate(self, finished: bool, stopping: bool) -> bool:
        """Validate when due (never on the way out after a signal); True when the best metric improved."""
        if self.validator is None or stopping or not self.validator.due(self.step, finished):
            return False
        return self.validator.run(self.model.backbone, self.step, self.monitor)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> ckpt.TrainingState:
        """Everything a resumed run needs, as a checkpoint (a collective: every rank's RNG streams are
        gathered, so every rank calls it). Tensors are shared with the trainer, not copied."""
        rng = dist.gather_objects(ckpt.capture_rng())  # every rank's own streams, in rank order
        return ckpt.TrainingState(
            format_version=ckpt.FORMAT_VERSION,
            backbone=self.cfg.model.backbone,
            model=self.model.backbone.state_dict(),
            head=self.model.head.state_dict(),
            queue=self.queue.state_dict() if self.queue is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=self.epoch,
            step=self.step,
            batch_in_epoch=self.batch_in_epoch,
            rng=rng,
            config=self.cfg.to_dict(),
            finished=self.step >= self.total_steps,
            validation=self.validator.state_dict() if self.validator is not None else None,
        )

    def load_state_dict(self, state: ckpt.TrainingState, path: Path) -> None:
        """Continue from ``state``, read from ``path`` (named in errors; with Partial FC the kernel
        shards lie beside it)."""
        if state.backbone != self.cfg.model.backbone:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds backbone {state.backbone!r} but "
                f"model.backbone={self.cfg.model.backbone!r}"
            )
        if (state.queue is None) != (self.queue is None):
            raise CheckpointError(
                f"checkpoint {str(path)!r} {'lacks' if self.queue else 'has'} key 'queue' "
                f"content; it was written with another contrast.enabled / data.views setting"
            )
        ckpt.load_module_state(self.model.backbone, state.model, path, "model")
        head_state, momentum = state.head, None
        if self.cfg.head.partial_fc:
            head_state, momentum = shards.load_kernel(path, state, self.model.head)
        ckpt.load_module_state(self.model.head, head_state, path, "head")
        if self.queue is not None:
            ckpt.load_module_state(self.queue, self._queue_state(state, path), path, "queue")
        self.optimizer.load_state_dict(state.optimizer)
        if momentum is not None:  # the sharded kernel's momentum: this rank's slice
            self.optimizer.state[self.model.head.kernel]["momentum_buffer"] = momentum.to(self.model.head.kernel)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        self.epoch, self.step, self.batch_in_epoch = state.epoch, state.step, state.batch_in_epoch
        if self.validator is not None:
            self.validator.load_state_dict(state.validation, path)
        if len(state.rng) == self.dist.world_size:
            ckpt.restore_rng(state.rng[self.dist.rank])
        else:
            log.warning(
                "%s was written by %d ranks, this run has %d: RNG streams restart from the seed",
                path,
                len(state.rng),
                self.dist.world_size,
            )

    def _queue_state(self, state: ckpt.TrainingState, path: Path) -> dict[str, torch.Tensor]:
        """The saved queue (rank 0's) in the order this rank held it, so that a resume on as many
        ranks repeats the run exactly (losses/queue.py: the ranks' orders differ)."""
        world, block = self.dist.world_size, self.world_keys // self.cfg.train.grad_accum  # keys per enqueue
        if world == 1 or len(state.rng) != world:  # another world size: every rank continues rank 0's
            return state.queue
        if self.queue.size % block:
            if self.dist.is_main:
                log.warning(
                    "%s: the queue's %d slots are no multiple of the %d keys one step writes, so each rank "
                    "held other oldest entries; every rank continues with rank 0's (not a bit-exact resume)",
                    path,
                    self.queue.size,
                    block,
                )
            return state.queue
        return as_held_by_rank(state.queue, self.dist.rank, world, block)

    def _resume(self) -> None:
        path = ckpt.resume_path(self.cfg)
        if path is None:
            return
        self.load_state_dict(ckpt.load_checkpoint(path), path)
        log.info("resumed from %s: epoch %d, batch %d, step %d", path, self.epoch, self.batch_in_epoch, self.step)

    def _save(self, epoch_end: bool, best: bool = False) -> None:
        state = self.state_dict()
        folder = ckpt.checkpoint_dir(self.cfg)
        if self.cfg.head.partial_fc:
            keep = "epoch" if epoch_end else "best" if best else None
            shards.save_kernel(folder, state, self.model.head, self.optimizer, keep=keep)
        if not self.dist.is_main:
            return
        # written once. A new best goes to best.pt first and last.pt becomes a hard link to it: a crash
        # in between resumes from the previous last.pt, which remembers the older best, so the redone
        # step publishes best.pt (and best.json) again
        ckpt.save_checkpoint(folder / ("best.pt" if best else "last.pt"), state)
        if best:
            ckpt.link_or_copy(folder / "best.pt", folder / "last.pt")
            write_best_json(folder, self.validator.best)
        if self.cfg.head.partial_fc:
            shards.prune_shards(folder, self.step, self.validator.best.step if self.validator is not None else None)
        if epoch_end:  # the epoch's copy is a hard link to last.pt
            ckpt.link_or_copy(folder / "last.pt", folder / f"epoch_{self.epoch}.pt")
        log.info(
            "saved %s at step %d%s", folder / "last.pt", self.step, f" (+ epoch_{self.epoch}.pt)" if epoch_end else ""
        )

    # ------------------------------------------------------------------ monitoring (after the step)
    def _log(self, out: StepOutput, views: torch.Tensor, schedule: EpochSchedule, images: bool) -> None:
        b = views.shape[0]
        h_norm, l_norm = out.norms[:b], out.norms[b:]
        pos_cos = (out.emb[:b] * out.emb[b:]).sum(1) if self.num_views == 2 else None
        if images:  # on each epoch's first step and on the last one
            self.monitor.image("train/pairs_L_H", pair_grid(to_network_input(views[:8])), self.step)
        if images and pos_cos is not None:
            self.monitor.image(
                "train/norm_vs_similarity",
                norm_similarity_heatmap(torch.cat([l_norm, h_norm]), pos_cos.repeat(2)),
                self.step,
            )
        if self.step % self.cfg.train.log_every:
            return
        active = out.contrast.active_fraction if out.contrast is not None else torch.zeros((), device=self.device)
        # the loss reduction across ranks and the statistics' host reads happen only on logging steps
        loss, loss_cls, loss_con, active = dist.all_reduce_mean(
            torch.stack([out.loss, out.loss_cls, out.loss_con, active.float()])
        ).tolist()
        now, (then, then_step) = time.perf_counter(), self._last_log
        self._last_log = (now, self.step)
        head = self.model.head
        images_per_s = (self.step - then_step) * b * self.num_views * self.dist.world_size / (now - then)
        self.monitor.log(
            {
                "train/loss": loss,
                "train/loss_cls": loss_cls,
                "train/loss_con": loss_con,
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/norm_mean": head.batch_mean.item(),
                "train/norm_std": head.batch_std.item(),
                "train/dynamic_margin": self.queue.dynamic_margin.item() if self.queue is not None else 0.0,
                "train/contrast_active_fraction": active,
                "train/images_per_s": images_per_s,
                "train/contrast_weight": schedule.contrast_weight,
                "train/quality_scale": schedule.quality_scale,
            },
            self.step,
        )
        self.monitor.histogram("train/feature_norm_H", h_norm, self.step)
        if pos_cos is not None:
            self.monitor.histogram("train/feature_norm_L", l_norm, self.step)
            self.monitor.histogram("train/positive_cosine", pos_cos, self.step)
        self._bar.set_postfix(loss=f"{loss:.3f}", con=f"{loss_con:.3f}", epoch=self.epoch, refresh=False)
        self._progress.report(self.step, self.epoch, loss, images_per_s)

    def close(self) -> None:
        """Flush TensorBoard, close the bar (safe to call more than once, after any failure)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.monitor.close()
