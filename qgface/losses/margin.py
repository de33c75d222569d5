"""Margin classification heads: AdaFace (default), ArcFace, CosFace, with the quality scaler (docs/method.md §3).

Only the target logit is changed: the target cosine is gathered from the cosine matrix
(``gather(1, y)``), the margin is applied to that [N, 1] column, and the result is scattered back
in place. No dense [N, C] one-hot or margin matrix exists, and acos/cos run on [N, 1] only.

Memory and time: the loss is one fused autograd function (:class:`_MarginCrossEntropy`) that walks
the rows in chunks of at most ``chunk_elems`` logits. Each chunk's logits are computed once, in one
buffer, and turned in place into their gradient during forward (the loss is a scalar, so backward
only scales). So the full-size tensors are the normalised kernel copy and the kernel gradient
[D, C]; no [N, C] matrix is ever live (C is 85k for MS1MV2, 617k for WebFace12M). The chunk size
is device-aware (``chunk_elems=0``: 16M logits = 64 MiB on a CPU, 256M = 1 GiB on a GPU, where
small chunks would re-read the 1.27 GB kernel of WebFace12M many times per step), and the TF32
policy of its fp32 matmuls is explicit (``tf32``, off by default: TF32's ~1e-3 relative error
on a cosine is ~0.06 on a logit scaled by s = 64). ``tools/bench_heads.py`` prints the figures.

Margin choices for the swapped heads (docs/method.md §3 "same head with the margin function swapped"):
- ArcFace: ``cos(clip(θ + m, ε, π-ε))``, the same angle clipping as AdaFace's angular margin and
  no "easy margin" / threshold fallback, so the target logit is non-increasing in θ up to π-ε
  (its gradient is 0 for θ > π-m-ε, where cos(θ+m) would otherwise turn back up).
- CosFace: ``cos - m``.

Feature-norm statistics (μ, σ) are buffers starting at 0 as docs/method.md §3 says (AdaFace itself
starts at 20/100). The ``ε`` in ``(σ + ε)`` is docs/method.md's: it keeps ĝ finite while σ is still 0
(an untrained head, the first step). They are updated only in training mode, under no_grad,
*before* ĝ is computed (AdaFace's order). With DDP the two buffers are broadcast from rank 0 at
every forward (``broadcast_buffers=True``), so rank 0's statistics are the ones used and saved.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qgface.tf32 import tf32_policy
from qgface.vocab.choices import MARGIN_KINDS

DEFAULT_CHUNK_ELEMS = {"cpu": 1 << 24, "cuda": 1 << 28}
"""logits held at once when ``chunk_elems=0``, per device type (others use the CPU figure)"""
EPS = 1e-3
_LO, _HI = -1.0 + EPS, 1.0 - EPS


def margin_scaler(norms: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, h: float) -> torch.Tensor:
    """ĝ = clip(h·(n' - μ)/(σ + ε), -1, 1) with n' = clip(n, 0.001, 100), detached (docs/method.md §3)."""
    safe = norms.detach().clamp(0.001, 100.0)
    return (h * (safe - mean) / (std + EPS)).clamp(-1.0, 1.0)


def target_logit(kind: str, cos_y: torch.Tensor, g_hat: torch.Tensor, m: float) -> torch.Tensor:
    """Margin-modified target cosine cos'_y of a column of target cosines (docs/method.md §3)."""
    if kind == "adaface":
        theta = torch.acos(cos_y).sub(m * g_hat).clamp(EPS, math.pi - EPS)
        return torch.cos(theta) - (m + m * g_hat)
    if kind == "arcface":
        return torch.cos(torch.acos(cos_y).add(m).clamp(EPS, math.pi - EPS))
    if kind == "cosface":
        return cos_y - m
    raise ValueError(f"unknown margin head kind {kind!r}; valid: {', '.join(MARGIN_KINDS)}")


def quality_scale_factor(g_hat: torch.Tensor, tau_q: float, s: float) -> torch.Tensor:
    """QS factor sigmoid(s·(ĝ + 2(0.5 - τ_q))) per sample (docs/method.md §3); only used when τ_q != 0."""
    return torch.sigmoid(s * (g_hat + 2.0 * (0.5 - tau_q)))


def logit_scales(g_hat: torch.Tensor, s: float, tau_q: float) -> torch.Tensor:
    """The scale of each row's logits [N, 1]: s, times the QS factor when τ_q != 0 (docs/method.md §3)."""
    if tau_q == 0.0:
        return torch.full_like(g_hat, s)
    return s * quality_scale_factor(g_hat, tau_q, s)


def _target_and_slope(
    kind: str, cos_y: torch.Tensor, g_hat: torch.Tensor, m: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos'_y and d cos'_y / d cos_y on an [R, 1] column (autograd on the small column only)."""
    with torch.enable_grad():
        c = cos_y.detach().requires_grad_()
        t = target_logit(kind, c, g_hat, m)
        (slope,) = torch.autograd.grad(t.sum(), c)
    return t.detach(), slope


class _MarginCrossEntropy(torch.autograd.Function):
    """mean_i CE(z_i, y_i), z = row_scale · (clamped cos with the target replaced by cos'_y).

    Inputs: e [N, D], kernel W [D, C] (unnormalised; cos uses W_c/||W_c||), y [N, 1] long,
    g_hat [N, 1] and row_scale [N, 1] (s, times the QS factor) constant, ``with_grad``: whether
    the gradient is wanted (the caller knows; inside ``forward`` grad mode is always off).

    The loss is a scalar, so its gradient is known up to the scalar ``grad_out`` as soon as the
    softmax is: forward computes each chunk's logits ONCE and turns them in place into the
    gradient; backward only multiplies by ``grad_out``. That is three matmuls per chunk and no
    recomputation (the kernel gradient [D, C] is allocated in forward instead of backward).
    """

    @staticmethod
    def forward(ctx, e, w, y, g_hat, row_scale, kind, m, chunk_rows, with_grad):  # type: ignore[override]
        n = e.shape[0]
        inv = w.norm(dim=0).clamp_min(1e-12).reciprocal()  # 1/||W_c||, applied to the logits (no kernel copy)
        loss_rows = e.new_empty(n)
        grad_e = torch.empty_like(e) if with_grad else None
        grad_w = torch.zeros_like(w) if with_grad else None  # first e^T dL/d(e @ W), see below
        # one logits buffer and one mask for every chunk: fresh [R, C] allocations would cost a
        # page fault per 4 KiB on a CPU, as much as the elementwise work itself
        buf_all = e.new_empty(min(n, chunk_rows), w.shape[1])
        clamped_all = torch.empty_like(buf_all, dtype=torch.bool) if with_grad else None
        below_all = torch.empty_like(clamped_all) if with_grad else None
        for r in _chunks(n, chunk_rows):
            rows = r.stop - r.start
            buf = torch.mm(e[r], w, out=buf_all[:rows]).mul_(inv)  # cos before clamping [R, C]
            if with_grad:  # the clamp passes the gradient only inside [LO, HI]
                clamped, below = clamped_all[:rows], below_all[:rows]
                torch.gt(buf, _HI, out=clamped)
                clamped.logical_or_(torch.lt(buf, _LO, out=below))
            buf.clamp_(_LO, _HI)
            t, slope = _target_and_slope(kind, buf.gather(1, y[r]), g_hat[r], m)
            rs = row_scale[r]
            buf.scatter_(1, y[r], t).mul_(rs)  # z
            z_max = buf.amax(1, keepdim=True)
            buf.sub_(z_max).exp_()
            total = buf.sum(1, keepdim=True)
            loss_rows[r] = (z_max + total.log() - t * rs).squeeze(1)  # log-sum-exp - z_y
            if not with_grad:
                continue
            buf.div_(total)  # softmax p
            d_zy = buf.gather(1, y[r]).sub_(1.0)  # dCE/dz_y = p_y - 1
            buf.mul_(rs / n)  # dL/dcos off the target (dz/dcos = row_scale), mean over rows
            buf.scatter_(1, y[r], d_zy * (rs / n) * slope)  # target: through cos'_y(cos_y)
            buf.masked_fill_(clamped, 0.0).mul_(inv)  # dL/d(e @ W): undo the column normalisation
            torch.mm(buf, w.t(), out=grad_e[r])
            grad_w.addmm_(e[r].t(), buf)
        if with_grad:
            # ||W_c|| depends on W_c too: dL/dW += -W_c · inv_c² · (W_c · A_c), A = e^T dL/d(e @ W)
            col_dot = torch.zeros_like(inv)
            for r in _chunks(w.shape[0], max(1, chunk_rows)):
                col_dot += (w[r] * grad_w[r]).sum(0)
            grad_w.addcmul_(w, (-(inv * inv) * col_dot).unsqueeze(0))
            ctx.save_for_backward(grad_e, grad_w)  # released by autograd after backward
        ctx.with_grad = with_grad
        return loss_rows.mean()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if not ctx.with_grad:
            raise RuntimeError("MarginHead's loss was computed with grad disabled or on inputs that need none")
        grad_e, grad_w = ctx.saved_tensors
        return grad_e * grad_out, grad_w * grad_out, None, None, None, None, None, None, None


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class MarginHead(nn.Module):
    """Class proxies + margin softmax loss (docs/method.md §3).

    ``forward(embeddings [N, D], norms [N, 1], labels [N]) -> (loss, margin_scaler [N, 1] detached)``.
    ``quality_scale`` (τ_q, 0 disables QS) is the head's own; ``forward(..., quality_scale=τ)`` uses
    another for one call (the trainer passes its warm-up ramp's value of the epoch).
    ``chunk_elems`` bounds the logits held at once (rows per chunk = chunk_elems // C, at least 1;
    0 = ``DEFAULT_CHUNK_ELEMS`` of the kernel's device). ``tf32``: let the head's fp32 matmuls use
    TF32 on CUDA.
    """

    def __init__(
        self,
        kind: str,
        num_classes: int,
        embedding_size: int = 512,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        quality_scale: float = 0.0,
        chunk_elems: int = 0,
        tf32: bool = False,
    ) -> None:
        super().__init__()
        if kind not in MARGIN_KINDS:
            raise ValueError(f"unknown margin head kind {kind!r}; valid: {', '.join(MARGIN_KINDS)}")
        self.kind, self.m, self.h, self.s, self.t_alpha = kind, m, h, s, t_alpha
        self.quality_scale = float(quality_scale)
        if chunk_elems < 0:
            raise ValueError(f"chunk_elems must be >= 0 (0 = the device's default), got {chunk_elems}")
        self.chunk_elems, self.tf32 = chunk_elems, tf32
        kernel = torch.empty(embedding_size, num_classes).uniform_(-1.0, 1.0)
        kernel.renorm_(2, 1, 1e-5).mul_(1e5)  # every column (class proxy) to unit L2 norm
        self.kernel = nn.Parameter(kernel)
        self.register_buffer("batch_mean", torch.zeros(1))
        self.register_buffer("batch_std", torch.zeros(1))

    def extra_repr(self) -> str:
        d, c = self.kernel.shape
        return (
            f"kind={self.kind}, classes={c}, dim={d}, m={self.m}, h={self.h}, s={self.s}, "
            f"quality_scale={self.quality_scale}"
        )

    def chunk_rows(self) -> int:
        """Rows of logits per chunk on the kernel's current device."""
        elems = self.chunk_elems or DEFAULT_CHUNK_ELEMS.get(self.kernel.device.type, DEFAULT_CHUNK_ELEMS["cpu"])
        return max(1, elems // self.kernel.shape[1])

    @torch.no_grad()
    def _update_stats(self, norms: torch.Tensor) -> None:
        safe = norms.detach().float().clamp(0.001, 100.0)
        a = self.t_alpha
        self.batch_mean.mul_(1 - a).add_(a * safe.mean())
        if safe.numel() > 1:  # the unbiased std of one sample is NaN and would poison σ for good
            self.batch_std.mul_(1 - a).add_(a * safe.std())

    def _row_scale(self, g_hat: torch.Tensor, quality_scale: float | None = None) -> torch.Tensor:
        return logit_scales(g_hat, self.s, self.quality_scale if quality_scale is None else quality_scale)

    def current_g_hat(self, norms: torch.Tensor) -> torch.Tensor:
        """ĝ [N, 1] by :func:`margin_scaler` from the current running statistics (no update)."""
        return margin_scaler(norms.float().reshape(-1, 1), self.batch_mean, self.batch_std, self.h)

    @torch.no_grad()
    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor, g_hat: torch.Tensor) -> torch.Tensor:
        """The dense scaled logits z [N, C] the loss sees (for inspection; allocates [N, C])."""
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        w = F.normalize(self.kernel.to(dtype), dim=0)
        y = labels.reshape(-1, 1).long()
        z = (embeddings.to(dtype) @ w).clamp_(_LO, _HI)
        z.scatter_(1, y, target_logit(self.kind, z.gather(1, y), g_hat.to(dtype), self.m))
        return z.mul_(self._row_scale(g_hat.to(dtype)))

    def forward(
        self,
        embeddings: torch.Tensor,
        norms: torch.Tensor,
        labels: torch.Tensor,
        quality_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=embeddings.device.type, enabled=False), tf32_policy(matmul=self.tf32):
            dtype = torch.promote_types(embeddings.dtype, torch.float32)  # fp32, or fp64 for gradcheck
            norms = norms.to(dtype).reshape(-1, 1)
            if self.training:
                self._update_stats(norms)
            g_hat = margin_scaler(norms, self.batch_mean.to(dtype), self.batch_std.to(dtype), self.h)
            with_grad = torch.is_grad_enabled() and (embeddings.requires_grad or self.kernel.requires_grad)
            loss = _MarginCrossEntropy.apply(
                embeddings.to(dtype),
                self.kernel.to(dtype),
                labels.reshape(-1, 1).long(),
                g_hat,
                self._row_scale(g_hat, quality_scale),
                self.kind,
                self.m,
                self.chunk_rows(),
                with_grad,
            )
        return loss, g_hat
