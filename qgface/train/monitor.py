"""Training monitoring: one metrics sink interface, TensorBoard on rank 0, a null sink elsewhere.

The run keeps ONE ``<run>/tb/`` folder, so a requeued job continues the same curves; on resume the
writer is opened with ``purge_step`` = the first step that will be redone, so TensorBoard drops any
events the interrupted job wrote after its last checkpoint and no step appears twice.
The renderers turn a batch into images: L/H sample pairs and the norm x similarity heatmap (logged on
each epoch's first step and on the last step). ``ProgressReport`` writes the progress lines a person reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
progress_log = logging.getLogger("qgface.train.progress")
"""progress lines; the training entry point sends them to stdout"""


class Monitor:
    """The sink interface; this base class drops everything (non-main ranks)."""

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Scalars under namespaced tags (``train/loss``) at optimiser step ``step``."""

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """Distribution of ``values`` (any shape)."""

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HxWx3 uint8 RGB image."""

    def close(self) -> None:
        """Flush and release files (idempotent)."""


class TensorBoardMonitor(Monitor):
    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer: SummaryWriter | None = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        if self._writer is not None:
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, float(value), step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self._writer is not None and values.numel() > 0:
            self._writer.add_histogram(tag, values.detach().float().cpu().reshape(-1), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def build_monitor(run_dir: str | Path, is_main: bool, resume_step: int = 0) -> Monitor:
    """TensorBoard in ``<run_dir>/tb`` on the main rank, a null sink elsewhere.

    ``resume_step`` is the step of the checkpoint the run continues from (0 for a fresh run); events
    at later steps, written by an interrupted job before it stopped, are purged.
    """
    if not is_main:
        return Monitor()
    return TensorBoardMonitor(Path(run_dir) / "tb", purge_step=resume_step + 1 if resume_step else None)


def pair_grid(views: torch.Tensor, max_pairs: int = 8) -> np.ndarray:
    """Samples as rows, views as columns (L left of H), denormalised and BGR->RGB for display.

    ``views`` is a loader batch [B, V, 3, H, W] normalised as (x/255 - 0.5)/0.5 (docs/method.md
    conventions); view 0 is H and view 1 is L, so the columns are reversed to read "L -> H".
    """
    x = views[:max_pairs].detach().float().cpu().flip(1)  # [b, V, 3, H, W], L first
    b, v, c, h, w = x.shape
    pixels = ((x * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = pixels.flip(2)  # BGR -> RGB
    grid = rgb.permute(0, 3, 1, 4, 2).reshape(b * h, v * w, c)  # rows of samples, views side by side
    return np.ascontiguousarray(grid.numpy())


def norm_similarity_heatmap(norms: torch.Tensor, cosines: torch.Tensor, bins: int = 32) -> np.ndarray:
    """2-D histogram of feature norm (x) vs positive-pair cosine (y) rendered to an RGB image."""
    # a Figure on an explicit Agg canvas: no pyplot, no global backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = norms.detach().float().cpu().reshape(-1).numpy()
    c = cosines.detach().float().cpu().reshape(-1).numpy()
    fig = Figure(figsize=(4, 3.2), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    counts, xedges, yedges = np.histogram2d(n, c, bins=bins, range=[_span(n, 0.0, None), _span(c, -1.0, 1.0)])
    mesh = ax.pcolormesh(xedges, yedges, counts.T, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="pairs")
    ax.set_xlabel("feature norm")
    ax.set_ylabel("positive-pair cosine")
    fig.tight_layout()
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def _span(values: np.ndarray, low: float | None, high: float | None) -> list[float]:
    """Axis range fitted to the data (5 % margin each side), clipped to the quantity's own bounds:
    a fixed -1..1 cosine axis would squeeze pairs that all sit near 0.9 into one row of bins."""
    lo, hi = float(values.min()), float(values.max())
    pad = max(hi - lo, 1e-3) * 0.05
    lo, hi = lo - pad, hi + pad
    if low is not None:
        lo = max(lo, low)
    if high is not None:
        hi = min(hi, high)
    return [lo, hi]


class ProgressReport:
    """One line per logging step on the ``qgface.train.progress`` logger (stdout: the terminal in
    local mode, the ``.out`` log on Slurm): step, epoch, loss, images/s and the ETA from the mean
    speed since this process started."""

    def __init__(self, total_steps: int, start_step: int) -> None:
        self.total, self.start_step, self.started = total_steps, start_step, time.perf_counter()

    def line(self, step: int, epoch: int, loss: float, images_per_s: float, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.perf_counter()) - self.started
        done = step - self.start_step
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        return (
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%) epoch {epoch} loss {loss:.4f} "
            f"{images_per_s:.1f} images/s ETA {_duration(eta)}"
        )

    def report(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        progress_log.info("%s", self.line(step, epoch, loss, images_per_s))


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress(total: int, initial: int, enabled: bool):
    """tqdm bar over optimiser steps with ETA, on the main rank only (``disable`` elsewhere)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
