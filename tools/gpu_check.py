#!/usr/bin/env python3
"""One prepared check of what only a GPU shows (issue 14); writes one JSON and prints a summary.

On one GPU, in under 8 minutes:
  train      bf16 and fp16 two-view training steps of ir50 at batch 256 through the real
             ``Trainer.train_step``: source images/s, peak memory, finite loss, the fp16 loss scale
  syncs      one bf16 step under ``torch.cuda.set_sync_debug_mode("warn")``: the host syncs it makes
  collectives  an NCCL process group of size 1 through the queue's all_gather and the DDP reducer
             (gradient bucket views, bf16 compression hook)
  head       the margin head at C = 617,970 (WebFace12M), 1024 rows, over chunk sizes, TF32 off/on
  loader     the training loader's source images/s next to the GPU step's
  eval       embedding images/s (each with its flip) and the CPU/GPU difference, TF32 off and on
  resume     save last.pt, resume it in a fresh Trainer: time and equality of the state
Goal for ir50 two-view bf16: >= 800 source images/s per H100/H200-class GPU.

``--smoke`` runs the same code paths on a CPU at toy sizes (ir_tiny, batch 8, C = 20,000, gloo)
in under two minutes, so CI keeps the script working; its figures mean nothing.

Usage:  python tools/gpu_check.py [--smoke] [--out FILE]   (default: $OUT/gpu_check.json when $OUT
        is set, else ./gpu_check.json)
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from qgface.config import load_config
from qgface.data.synthetic import generate_training_set
from qgface.eval.embed import fused_embedding
from qgface.losses import MarginHead
from qgface.losses.queue import gather_own_first
from qgface.tf32 import tf32_policy
from qgface.train import dist as qdist
from qgface.train.components import FaceModel
from qgface.train.engine import Trainer

log = logging.getLogger("gpu_check")
MIB = 1024 * 1024

FULL = {
    "backbone": "ir50",
    "batch": 256,
    "warmup": 3,
    "steps": 8,
    "identities": 128,
    "per_identity": 6,
    "classes": 617_970,
    "head_rows": 1024,
    "chunks": [1 << 24, 1 << 26, 1 << 28, 1 << 29],
    "eval_batch": 256,
    "eval_cpu_images": 16,
    "loader_batches": 12,
}
SMOKE = {
    "backbone": "ir_tiny",
    "batch": 8,
    "warmup": 1,
    "steps": 1,
    "identities": 8,
    "per_identity": 4,
    "classes": 5_000,
    "head_rows": 32,
    "chunks": [1 << 16, 1 << 20],
    "eval_batch": 8,
    "eval_cpu_images": 4,
    "loader_batches": 3,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="toy sizes on whatever device there is (CPU in CI)")
    p.add_argument("--out", default="", help="JSON path (default: $OUT/gpu_check.json or ./gpu_check.json)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA device: run with --smoke for the CPU version")
    size = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    out = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    report: dict = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "smoke": args.smoke,
        "sizes": size,
        "checks": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        generate_training_set(
            root,
            identities=size["identities"],
            images_per_identity=size["per_identity"],
            workers=max(1, args.workers),
        )
        report["synthetic_s"] = round(time.perf_counter() - t0, 1)
        ctx = {"root": root, "tmp": Path(tmp), "size": size, "device": device, "workers": args.workers}
        for name, check in CHECKS:
            report["checks"][name] = _run(name, check, ctx)
            _write(out, report)
    report["total_s"] = round(time.perf_counter() - started, 1)
    _write(out, report)
    _summary(report, out)
    return 0 if all(c.get("ok") for c in report["checks"].values()) else 1


# ---------------------------------------------------------------- the checks
def check_train(ctx: dict) -> dict:
    size, result = ctx["size"], {}
    for precision in ("bf16", "fp16"):
        trainer = _trainer(ctx, f"train_{precision}", f"train.precision={precision}")
        try:
            views, labels = _first_batch(trainer)
            schedule = trainer.current_schedule()
            _reset_peak(ctx["device"])
            for _ in range(size["warmup"]):
                trainer.train_step(views, labels, schedule)
            _sync(ctx["device"])
            t0 = time.perf_counter()
            losses = [trainer.train_step(views, labels, schedule).loss for _ in range(size["steps"])]
            _sync(ctx["device"])
            seconds = (time.perf_counter() - t0) / size["steps"]
            result[precision] = {
                "precision_used": trainer.precision,
                "source_images_per_s": round(size["batch"] / seconds, 1),
                "backbone_images_per_s": round(2 * size["batch"] / seconds, 1),
                "step_ms": round(seconds * 1e3, 1),
                "peak_memory_mib": _peak_mib(ctx["device"]),
                "loss_finite": bool(torch.isfinite(torch.stack(losses)).all()),
                "last_loss": round(float(losses[-1]), 4),
                "loss_scale": float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None,
            }
        finally:
            trainer.close()
            del trainer
            _free(ctx["device"])
    result["ok"] = all(r["loss_finite"] for r in result.values() if isinstance(r, dict))
    result["goal_bf16_800_source_images_per_s"] = result["bf16"]["source_images_per_s"] >= 800
    return result


def check_syncs(ctx: dict) -> dict:
    if ctx["device"].type != "cuda":
        return {"ok": True, "skipped": "sync debug mode needs CUDA"}
    trainer = _trainer(ctx, "syncs", "train.precision=bf16")
    try:
        views, labels = _first_batch(trainer)
        schedule = trainer.current_schedule()
        trainer.train_step(views, labels, schedule)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_step(views, labels, schedule)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        messages = [str(w.message).splitlines()[0][:200] for w in caught if "synchroniz" in str(w.message)]
        # expected: the one flag read per step (any_rank) and the queue view's nonzero
        return {"ok": True, "host_syncs": len(messages), "messages": sorted(set(messages))[:10]}
    finally:
        trainer.close()
        _free(ctx["device"])


def check_collectives(ctx: dict) -> dict:
    device = ctx["device"]
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        keys = torch.randn(16, 512, device=device)
        gathered = gather_own_first(keys)
        result: dict = {"backend": backend, "all_gather_equal": bool(torch.equal(gathered, keys))}
        compressions = ["none", "bf16"] if device.type == "cuda" else ["none", "fp16"]
        x = torch.randn(2 * ctx["size"]["batch"] // 4, 3, 112, 112, device=device)
        y = torch.randint(0, 1000, (x.shape[0],), device=device)
        torch.manual_seed(0)
        reference = FaceModel(_backbone(ctx), MarginHead("adaface", 1000)).to(device).eval()
        reference(x, y)[2].backward()
        for compression in compressions:
            model = copy.deepcopy(reference)
            model.zero_grad(set_to_none=True)
            ddp = qdist.wrap_ddp(model, device, static_graph=False, compression=compression)
            ddp(x, y)[2].backward()
            diffs = [
                float((p.grad - r.grad).abs().max() / r.grad.abs().max().clamp_min(1e-12))
                for p, r in zip(model.parameters(), reference.parameters())
                if r.grad is not None
            ]
            result[f"ddp_{compression}_max_rel_grad_diff"] = max(diffs)
            del ddp, model
        result["ok"] = (
            result["all_gather_equal"]
            and result["ddp_none_max_rel_grad_diff"] < 1e-5
            and result[f"ddp_{compressions[1]}_max_rel_grad_diff"] < 2e-2
        )
        return result
    finally:
        torch.distributed.destroy_process_group()
        _free(device)


def _head_step(head: MarginHead, emb: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One forward and backward of the head; returns the loss."""
    head.kernel.grad = emb.grad = None
    loss, _ = head(emb, norms, labels)
    loss.backward()
    return loss.detach()


def check_head(ctx: dict) -> dict:
    size, device = ctx["size"], ctx["device"]
    n, c = size["head_rows"], size["classes"]
    emb = torch.nn.functional.normalize(torch.randn(n, 512, device=device), dim=1).requires_grad_()
    norms = torch.rand(n, 1, device=device) * 30 + 5
    labels = torch.randint(0, c, (n,), device=device)
    rows = []
    for tf32 in (False, True):
        for chunk in size["chunks"]:
            torch.manual_seed(0)  # the same kernel in every run, so the losses must agree
            head = MarginHead("adaface", c, chunk_elems=chunk, tf32=tf32).to(device).train()
            step = functools.partial(_head_step, head, emb, norms, labels)

            _reset_peak(device)
            loss = step()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            _sync(device)
            rows.append(
                {
                    "tf32": tf32,
                    "chunk_elems": chunk,
                    "rows_per_chunk": head.chunk_rows(),
                    "fwd_bwd_ms": round((time.perf_counter() - t0) / 3 * 1e3, 2),
                    "peak_memory_mib": _peak_mib(device),
                    "loss": round(float(loss), 5),
                }
            )
            del head, step
            _free(device)
    exact = [r["loss"] for r in rows if not r["tf32"]]
    tf32_diff = max(abs(r["loss"] - exact[0]) for r in rows if r["tf32"])
    return {"ok": max(exact) - min(exact) < 1e-3, "classes": c, "rows": n, "loss_diff_tf32": tf32_diff, "runs": rows}


def check_loader(ctx: dict) -> dict:
    size = ctx["size"]
    trainer = _trainer(ctx, "loader", f"data.num_workers={ctx['workers']}")
    try:
        trainer._epoch_batches()
        batches = iter(trainer.loader)
        next(batches)  # workers started
        t0 = time.perf_counter()
        count = 0
        for _ in range(size["loader_batches"]):
            views, _ = next(batches)
            count += views.shape[0]
        seconds = time.perf_counter() - t0
        return {"ok": True, "workers": ctx["workers"], "source_images_per_s": round(count / seconds, 1)}
    finally:
        trainer.close()


def check_eval(ctx: dict) -> dict:
    size, device = ctx["size"], ctx["device"]
    torch.manual_seed(0)
    model = _backbone(ctx).to(device).eval()
    images = torch.rand(size["eval_batch"], 3, 112, 112, device=device) * 2 - 1
    with tf32_policy(matmul=False, conv=False):
        fused_embedding(model, images)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            emb, _ = fused_embedding(model, images)
        _sync(device)
    seconds = (time.perf_counter() - t0) / 3
    with tf32_policy(matmul=True, conv=True):
        emb_tf32, _ = fused_embedding(model, images)
    k = size["eval_cpu_images"]
    cpu_emb, _ = fused_embedding(copy.deepcopy(model).cpu().float(), images[:k].cpu())
    diff = float((emb[:k].cpu() - cpu_emb).abs().max())
    diff_tf32 = float((emb_tf32[:k].cpu() - cpu_emb).abs().max())
    return {
        "ok": diff < 1e-4,
        "images_per_s_with_flip": round(size["eval_batch"] / seconds, 1),
        "max_abs_diff_cpu_gpu": diff,
        "max_abs_diff_cpu_gpu_tf32": diff_tf32,
    }


def check_resume(ctx: dict) -> dict:
    run = "resume"
    trainer = _trainer(ctx, run, "train.precision=bf16")
    try:
        views, labels = _first_batch(trainer)
        schedule = trainer.current_schedule()
        trainer.train_step(views, labels, schedule)
        trainer.step = 1
        t0 = time.perf_counter()
        trainer._save(epoch_end=False)
        save_s = time.perf_counter() - t0
        saved = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()
        del trainer
        _free(ctx["device"])
    t0 = time.perf_counter()
    resumed = _trainer(ctx, run, "train.precision=bf16", resume="auto")
    load_s = time.perf_counter() - t0
    try:
        state = resumed.model.state_dict()
        equal = all(torch.equal(state[k].cpu(), v) for k, v in saved.items())
        size = (ctx["tmp"] / run / "checkpoints" / "last.pt").stat().st_size
        return {
            "ok": equal and resumed.step == 1,
            "state_equal": equal,
            "step": resumed.step,
            "checkpoint_mib": round(size / MIB, 1),
            "save_s": round(save_s, 2),
            "trainer_init_with_resume_s": round(load_s, 2),
        }
    finally:
        resumed.close()
        _free(ctx["device"])


CHECKS: list[tuple[str, Callable[[dict], dict]]] = [
    ("train", check_train),
    ("syncs", check_syncs),
    ("collectives", check_collectives),
    ("head", check_head),
    ("loader", check_loader),
    ("eval", check_eval),
    ("resume", check_resume),
]


# ---------------------------------------------------------------- helpers
def _trainer(ctx: dict, run: str, *extra: str, resume: str = "none") -> Trainer:
    size = ctx["size"]
    overrides = [
        f"data.root={ctx['root']}",
        f"run_dir={ctx['tmp'] / run}",
        f"model.backbone={size['backbone']}",
        f"data.batch_size={size['batch']}",
        "data.num_workers=0",
        f"train.resume={resume}",
        f"contrast.queue_size={max(16384, 4 * size['batch'])}",
        "train.log_every=1000000",
        *extra,
    ]
    return Trainer(load_config(None, overrides))


def _first_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    views, labels = next(iter(trainer._epoch_batches()))
    return views.to(trainer.device), labels.to(trainer.device)


def _backbone(ctx: dict) -> torch.nn.Module:
    from qgface.models import build_backbone

    return build_backbone(ctx["size"]["backbone"])


def _run(name: str, check: Callable[[dict], dict], ctx: dict) -> dict:
    log.info("check %s ...", name)
    t0 = time.perf_counter()
    try:
        result = check(ctx)
    except Exception as exc:  # one failed check must not hide the others' figures
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("check %s: %s in %.1f s", name, "ok" if result.get("ok") else "FAILED", result["seconds"])
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {cap[0]}.{cap[1]})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / MIB, 1) if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _write(path: Path, report: dict) -> None:
    from qgface.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2))


def _summary(report: dict, path: Path) -> None:
    lines = [
        f"gpu_check on {report['device']} (torch {report['torch']}{', smoke' if report['smoke'] else ''}): "
        f"{report['total_s']} s -> {path}"
    ]
    for name, r in report["checks"].items():
        status = "ok" if r.get("ok") else "FAILED"
        detail = r.get("error") or ", ".join(
            f"{k}={v}" for k, v in r.items() if k not in ("ok", "runs", "messages", "traceback", "seconds")
        )
        lines.append(f"  {name:12s} {status:6s} {detail}")
    if "runs" in report["checks"].get("head", {}):
        for run in report["checks"]["head"]["runs"]:
            lines.append(
                f"    head tf32={run['tf32']!s:5s} chunk={run['chunk_elems']:>10d} "
                f"({run['rows_per_chunk']} rows): {run['fwd_bwd_ms']} ms, peak {run['peak_memory_mib']} MiB"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
