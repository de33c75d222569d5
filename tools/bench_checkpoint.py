#!/usr/bin/env python3
"""Save and load time of a training checkpoint at WebFace12M scale (prints numbers, asserts nothing).

    python tools/bench_checkpoint.py                      # ~3 GB in a temp dir under /tmp
    python tools/bench_checkpoint.py --dir /scratch/me    # on the filesystem the run directory uses
    python tools/bench_checkpoint.py --classes 85742      # MS1MV2 size (~0.7 GB)

The state has the layout ``Trainer.state_dict`` returns: an ir50-sized backbone (43.6 M float32 values) and
the class proxies ``[C, 512]``, each with its SGD momentum, plus the counters. Timed, as the trainer
does them at an epoch end: ``save_checkpoint`` (torch.save + fsync + rename) of ``last.pt``, then the
epoch copy as ``link_or_copy`` and, for comparison, as the second full write the trainer made before.
Loading is timed with ``load_checkpoint`` (mmap: the call alone, then with every tensor read once) and
with a plain ``torch.load`` that reads the whole file. The file was just written, so it is in the page
cache: loads read memory, as every rank after the first on a node does; a cold read from a network
filesystem is bounded by its bandwidth instead.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

import torch

from qgface.config import Config
from qgface.train.checkpoint import FORMAT_VERSION, TrainingState, link_or_copy, load_checkpoint, save_checkpoint

BACKBONE_VALUES = 43_600_000
"""float32 parameters of ir50 (the backbone part of the state)"""
EMBEDDING_DIM = 512


def make_state(classes: int) -> TrainingState:
    """A checkpoint with tensors of the real sizes (random values)."""
    generator = torch.Generator().manual_seed(0)
    backbone = torch.randn(BACKBONE_VALUES, generator=generator)
    kernel = torch.randn(EMBEDDING_DIM, classes, generator=generator)
    return TrainingState(
        format_version=FORMAT_VERSION,
        backbone="ir50",
        model={"weights": backbone},
        head={"kernel": kernel},
        queue=None,
        optimizer={
            "state": {0: {"momentum_buffer": backbone.clone()}, 1: {"momentum_buffer": kernel.clone()}},
            "param_groups": [{"lr": 0.1, "params": [0, 1]}],
        },
        scheduler={},
        scaler={},
        epoch=1,
        step=1000,
        batch_in_epoch=0,
        rng=[],
        config=Config().to_dict(),
        finished=False,
    )


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _read_all(state: TrainingState) -> float:
    """Touch every tensor once (a sum), as load_state_dict's copies would."""
    total = 0.0
    for part in (state.model, state.head):
        total += sum(float(t.sum()) for t in part.values())
    for slot in state.optimizer["state"].values():
        total += float(slot["momentum_buffer"].sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="folder for the files (default: a temp dir under /tmp, deleted)")
    parser.add_argument("--classes", type=int, default=617_970, help="identities C (WebFace12M: 617,970)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        state = make_state(args.classes)
        size = sum(t.numel() * 4 for t in (state.model["weights"], state.head["kernel"])) * 2
        free = shutil.disk_usage(folder).free
        if free < 3.2 * size:
            raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the bench writes three {size / 1e9:.1f} GB files")
        print(f"checkpoint of {size / 1e9:.2f} GB (C = {args.classes:,}) in {folder} ({free / 1e9:.0f} GB free)")
        last = folder / "last.pt"
        seconds, _ = _timed(functools.partial(save_checkpoint, last, state))
        print(f"  save last.pt (torch.save + fsync + rename)  {seconds:7.2f} s  {size / 1e9 / seconds:6.2f} GB/s")
        seconds, linked = _timed(lambda: link_or_copy(last, folder / "epoch_1.pt"))
        how = "hard link" if linked else "copy (no links here)"
        print(f"  epoch copy as {how:29s}{seconds:7.3f} s")
        seconds, _ = _timed(functools.partial(save_checkpoint, folder / "epoch_1_written.pt", state))
        print(f"  epoch copy as a second save (before)        {seconds:7.2f} s")
        del state
        seconds, loaded = _timed(lambda: load_checkpoint(last))
        print(f"  load_checkpoint (mmap), the call            {seconds:7.3f} s")
        seconds, _ = _timed(lambda: _read_all(loaded))
        print(f"  ... then every tensor read once             {seconds:7.2f} s")
        del loaded
        seconds, loaded = _timed(lambda: torch.load(last, map_location="cpu", weights_only=True))
        print(f"  torch.load without mmap (before)            {seconds:7.2f} s")
        seconds, _ = _timed(lambda: _read_all(loaded))
        print(f"  ... then every tensor read once             {seconds:7.2f} s")


if __name__ == "__main__":
    main()
