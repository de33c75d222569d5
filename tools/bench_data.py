#!/usr/bin/env python3
"""Data-path throughput and memory: RecordIO reads, views, the DataLoader per worker count, the index.

    python tools/bench_data.py                   # 20,000 synthetic 112x112 JPEG records in a temp dir
    python tools/bench_data.py --dir /scratch/b  # keep (and reuse) the generated .rec/.idx there
    python tools/bench_data.py --section views   # only read + decode + training views (docs/method.md §2)
    python tools/bench_data.py --section loader --workers 0,1,2,4   # source images/s of the loader
    python tools/bench_data.py --section index --index-records 12700000  # RSS of a WebFace12M-size .idx

Prints numbers and asserts nothing. The MXNet side runs in the cached venv ``<repo>/.mxnet-venv``
(built by ``tests/test_mxnet_interop.py``) in a subprocess, with one engine/OMP thread; it is
skipped when that venv does not exist. Target: qgface random reads >= 1.5x MXNet's.
The views section times ``TwoViewDataset`` items (read, decode, the views as uint8 planes) in this
process; target for ``lh``: >= 650 source images/s per core (the published implementation ~330).
The loader section times ``build_train_loader`` (uint8 batches, spawned workers, the ``lh`` views)
per worker count, after a warm-up batch, so worker start-up is not counted. The index section writes
a synthetic ``.idx`` (InsightFace key layout, no image data needed) and measures, each in a fresh
process, the resident memory added by opening it: the former dict-of-lines index against
``RecordIOReader``'s arrays, plus the bytes a spawned worker receives (the reader as DataLoader's
pickler sends it: with the arrays in shared memory, a handle).
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import json
import os
import pickle
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import cv2
import numpy as np
import torch

from qgface.config import DataConfig, from_dict
from qgface.data import views as V
from qgface.data.datasets import RecordTrainDataset, TwoViewDataset
from qgface.data.images import decode_bgr, encode_jpeg
from qgface.data.insightface_rec import read_insightface_header, write_insightface_rec
from qgface.data.irheader import unpack
from qgface.data.loader import build_train_loader
from qgface.data.recordio import RecordIOReader

MXNET_VENV = Path(__file__).resolve().parents[1] / ".mxnet-venv"

MXNET_BENCH = r"""
import json, sys, time
import numpy as np
import mxnet as mx
rec, idx, keys_path, n_decode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
keys = np.load(keys_path).tolist()
r = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
for k in keys[:1000]:
    r.read_idx(k)
t = time.perf_counter()
for k in keys:
    r.read_idx(k)
reads = len(keys) / (time.perf_counter() - t)
t = time.perf_counter()
for k in keys[:n_decode]:
    header, jpeg = mx.recordio.unpack(r.read_idx(k))
    mx.image.imdecode(jpeg).asnumpy()
decodes = n_decode / (time.perf_counter() - t)
print(json.dumps({"reads": reads, "decodes": decodes}))
"""


def face_like(rng: np.random.Generator, identity: int) -> np.ndarray:
    """A 112x112 BGR image with a face-ish layout: skin ellipse, eyes, mouth, noise; colours per identity."""
    ident = np.random.default_rng(identity)
    img = np.empty((112, 112, 3), np.uint8)
    img[:] = ident.integers(20, 230, 3)
    skin = tuple(int(c) for c in ident.integers(60, 240, 3))
    cx, cy = 56 + int(rng.integers(-4, 5)), 60 + int(rng.integers(-4, 5))
    cv2.ellipse(img, (cx, cy), (34, 44), 0, 0, 360, skin, -1)
    for dx in (-15, 15):
        cv2.circle(img, (cx + dx, cy - 10), 5, (40, 30, 30), -1)
    cv2.ellipse(img, (cx, cy + 20), (12, 5), 0, 0, 180, (60, 40, 150), -1)
    noise = rng.normal(0, 12, img.shape)
    return cv2.GaussianBlur(np.clip(img + noise, 0, 255).astype(np.uint8), (3, 3), 0)


def make_dataset(directory: Path, num: int, per_identity: int, seed: int) -> tuple[Path, Path]:
    """Write (or reuse, if it has ``num`` images) an InsightFace-layout pair of face-like JPEGs."""
    rec, idx = directory / "bench.rec", directory / "bench.idx"
    if rec.exists() and idx.exists():
        first, end = read_insightface_header(RecordIOReader(rec, idx))
        if end - first == num:
            return rec, idx
    rng = np.random.default_rng(seed)
    items = ((encode_jpeg(face_like(rng, i // per_identity), quality=95), i // per_identity) for i in range(num))
    t = time.perf_counter()
    write_insightface_rec(rec, idx, items)
    print(f"generated {num} records in {time.perf_counter() - t:.1f}s: {rec} ({rec.stat().st_size / 2**20:.1f} MiB)")
    return rec, idx


def bench_reads(rec: Path, idx: Path, keys: np.ndarray) -> float:
    """qgface RecordIOReader: random-access reads per second."""
    reader = RecordIOReader(rec, idx)
    for k in keys[:1000].tolist():
        reader.read(k)
    key_list = keys.tolist()
    t = time.perf_counter()
    for k in key_list:
        reader.read(k)
    return len(key_list) / (time.perf_counter() - t)


def bench_read_decode(rec: Path, idx: Path, keys: np.ndarray) -> float:
    """qgface: random read + unpack + decode to BGR, images per second."""
    reader = RecordIOReader(rec, idx)
    key_list = keys.tolist()
    t = time.perf_counter()
    for k in key_list:
        decode_bgr(unpack(reader.read(k))[1])
    return len(key_list) / (time.perf_counter() - t)


def bench_mxnet(python: Path, rec: Path, idx: Path, keys: np.ndarray, n_decode: int) -> dict[str, float]:
    """MXNet's MXIndexedRecordIO (read_idx) and read + mx.image.imdecode, in the MXNet venv."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "keys.npy", keys)
        (Path(tmp) / "bench.py").write_text(MXNET_BENCH)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1", MXNET_ENGINE_TYPE="NaiveEngine")
        out = subprocess.run(
            [
                str(python),
                "-I",
                str(Path(tmp) / "bench.py"),
                str(rec),
                str(idx),
                str(Path(tmp) / "keys.npy"),
                str(n_decode),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_io(args: argparse.Namespace, rec: Path, idx: Path) -> None:
    """Random reads and read+decode, ours and MXNet's, on the same random key sequence."""
    first, end = read_insightface_header(RecordIOReader(rec, idx))
    keys = np.random.default_rng(args.seed + 1).integers(first, end, args.reads)
    ours_reads = bench_reads(rec, idx, keys)
    ours_decode = bench_read_decode(rec, idx, keys[: args.decodes])
    print(f"qgface RecordIOReader   random reads   {ours_reads:12,.0f} /s")
    print(f"qgface read+decode_bgr  images         {ours_decode:12,.0f} /s")
    python = args.mxnet_python or MXNET_VENV / "bin" / "python"
    if args.no_mxnet or not Path(python).exists():
        print(
            f"MXNet: skipped ({'--no-mxnet' if args.no_mxnet else f'no venv at {python}'}; "
            "run tests/test_mxnet_interop.py once to build it)"
        )
        return
    mx = bench_mxnet(Path(python), rec, idx, keys, args.decodes)
    print(f"MXNet MXIndexedRecordIO random reads   {mx['reads']:12,.0f} /s")
    print(f"MXNet read+imdecode     images         {mx['decodes']:12,.0f} /s")
    print(f"ratio qgface/MXNet      random reads   {ours_reads / mx['reads']:12.2f}x (target >= 1.5x)")
    print(f"ratio qgface/MXNet      read+decode    {ours_decode / mx['decodes']:12.2f}x")


def _rate(fn, items: list, repeat: int = 1) -> tuple[float, float]:
    """Best of ``repeat`` rounds: (items per wall second, items per CPU second of this thread)."""
    best_wall = best_cpu = 0.0
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        for item in items:
            fn(item)
        best_wall = max(best_wall, len(items) / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, len(items) / max(time.thread_time() - cpu, 1e-9))
    return best_wall, best_cpu


def section_views(args: argparse.Namespace, rec: Path, idx: Path) -> None:
    """Read + decode + the training views per source image (``TwoViewDataset``, uint8 planes)."""
    if idx.parent != rec.parent or idx.stem != rec.stem:
        raise ValueError(f"{rec} and {idx} must be <dir>/<name>.rec and <dir>/<name>.idx")
    base = RecordTrainDataset(rec.parent, name=rec.stem)
    order = np.random.default_rng(args.seed + 2).permutation(len(base))[: args.view_images].tolist()
    cfg = DataConfig()
    decoded = [base[i][0] for i in order[:2000]]
    rng = np.random.default_rng(args.seed)
    print(
        f"views on one thread over {len(order)} random records, best of {args.repeat} rounds "
        "(rate per wall second / per CPU second of the thread):"
    )
    for label, fn, items in (
        ("read+decode only", base.__getitem__, order),
        ("H view only (decoded input)", lambda img: V.h_view(img, rng), decoded),
        ("L view only (decoded input)", lambda img: V.l_view(img, rng, cfg), decoded),
        ("AdaFace view only (decoded input)", lambda img: V.adaface_view(img, rng, cfg.adaface_p), decoded),
    ):
        wall, cpu = _rate(fn, items, args.repeat)
        print(f"  {label:40s} {wall:10,.0f} /s {cpu:10,.0f} /s")
    for views in ("lh", "adaface", "flip"):
        dataset = TwoViewDataset(base, views, DataConfig(views=views), seed=args.seed)
        _rate(dataset.__getitem__, [(i, 0) for i in order[:200]])  # warm-up: page cache, code paths
        wall, cpu = _rate(dataset.__getitem__, [(i, 0) for i in order], args.repeat)
        target = "   (target >= 650 /s per core)" if views == "lh" else ""
        print(f"  read+decode+views (uint8 planes), {views:7s} {wall:10,.0f} /s {cpu:10,.0f} /s{target}")
    if args.profile:
        dataset = TwoViewDataset(base, "lh", cfg, seed=args.seed)
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [dataset[(i, 0)] for i in order])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def section_loader(args: argparse.Namespace, rec: Path) -> None:
    """Source images/s of the training DataLoader (lh views, uint8 batches) per worker count."""
    if rec.name != "train.rec":  # the loader opens <root>/train.rec
        root = rec.parent / "loader-root"
        root.mkdir(exist_ok=True)
        for suffix in (".rec", ".idx"):
            link = root / f"train{suffix}"
            if not link.exists():
                link.symlink_to(rec.with_suffix(suffix))
    else:
        root = rec.parent
    batch = args.loader_batch
    print(
        f"loader: lh views, batch {batch} source images, {args.loader_batches} batches timed after one warm-up "
        f"(uint8 batch {batch * 2 * 3 * 112 * 112 / 2**20:.1f} MiB; as float32 it was "
        f"{batch * 2 * 3 * 112 * 112 * 4 / 2**20:.1f} MiB); {len(os.sched_getaffinity(0))} CPU(s) available"
    )
    for workers in args.workers:
        cfg = from_dict({"data": {"batch_size": batch, "num_workers": workers}, "output_root": str(rec.parent)})
        loader, sampler, _ = build_train_loader(cfg, root, rank=0, world_size=1)
        sampler.set_epoch(0)
        batches = iter(loader)
        next(batches)
        start = time.perf_counter()
        for _ in range(args.loader_batches):
            views, _ = next(batches)
        seconds = time.perf_counter() - start
        assert views.dtype == torch.uint8
        print(f"  num_workers={workers:2d}  {args.loader_batches * batch / seconds:10,.0f} source images/s")
        del batches, loader


def write_synthetic_idx(directory: Path, records: int, identities: int) -> tuple[Path, Path]:
    """A ``.idx`` in InsightFace key order (images 1..N, header 0, identities) and an empty ``.rec``."""
    rec, idx = directory / "index-bench.rec", directory / "index-bench.idx"
    rec.write_bytes(b"")
    images = records - 1 - identities
    keys = np.concatenate([np.arange(1, images + 1), [0], np.arange(images + 1, records)])
    offsets = np.cumsum(np.random.default_rng(0).integers(1500, 3000, records) // 4 * 4) - 1500
    with open(idx, "w") as f:
        for start in range(0, records, 1_000_000):
            stop = min(records, start + 1_000_000)
            f.write("".join(f"{k}\t{o}\n" for k, o in zip(keys[start:stop].tolist(), offsets[start:stop].tolist())))
    return rec, idx


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_index(kind: str, rec: Path, idx: Path) -> dict[str, float]:
    """In this (fresh) process: RSS added by opening ``idx`` the ``kind`` way (``dict`` or ``arrays``)."""
    before, start = _rss_bytes(), time.perf_counter()
    if kind == "dict":  # the former index: {key: offset} of every line plus the key list
        offsets = {}
        for line in idx.read_bytes().split(b"\n"):
            fields = line.split()
            if fields:
                offsets[int(fields[0])] = int(fields[1])
        held = (offsets, list(offsets))
        pickled = len(pickle.dumps(held))
    else:  # what RecordTrainDataset does: the arrays, moved to shared memory for the workers
        held = RecordIOReader(rec, idx)
        held.index.share_memory()
        pickled = len(ForkingPickler.dumps(held))  # DataLoader's spawned workers are sent this
    seconds = time.perf_counter() - start
    try:  # hand freed parse buffers back to the OS (glibc keeps them), so RSS is what the index holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return {
        "rss": _rss_bytes() - before,
        "seconds": seconds,
        "pickled": pickled,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before,
    }


def section_index(args: argparse.Namespace, directory: Path) -> None:
    """RSS per record of a large ``.idx``: the former dict index against the compact arrays."""
    records = args.index_records
    start = time.perf_counter()
    rec, idx = write_synthetic_idx(directory, records, max(1, records // 20))
    print(
        f"index: synthetic {idx.name} with {records:,} records ({idx.stat().st_size / 2**20:.0f} MiB) "
        f"written in {time.perf_counter() - start:.0f}s; each measured in a fresh process"
    )
    for kind, label in (
        ("dict", "before: dict of lines + key list"),
        ("arrays", "after: shared RecordIOReader arrays"),
    ):
        out = subprocess.run(
            [sys.executable, __file__, "--measure-index", kind, str(rec), str(idx)],
            capture_output=True,
            text=True,
            check=True,
        )
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  {label:36s} RSS +{m['rss'] / 2**20:8.1f} MiB = {m['rss'] / records:6.1f} B/record, "
            f"peak while parsing +{m['peak'] / 2**20:7.0f} MiB, {m['seconds']:5.1f} s to open, "
            f"{m['pickled'] / 2**20:9.3f} MiB sent to each spawned worker"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where to write/reuse bench.rec/.idx (default: a temp dir, deleted)")
    parser.add_argument("--num", type=int, default=20_000, help="number of 112x112 JPEG records to generate")
    parser.add_argument("--per-identity", type=int, default=20, help="images per synthetic identity")
    parser.add_argument("--reads", type=int, default=200_000, help="random reads timed for the read rate")
    parser.add_argument("--decodes", type=int, default=5_000, help="random reads+decodes timed for the decode rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and of the key sequence")
    parser.add_argument(
        "--only-io", action="store_true", help="run only the RecordIO read / read+decode section (same as --section io)"
    )
    parser.add_argument(
        "--section",
        choices=("all", "io", "views", "loader", "index"),
        default="all",
        help="io: RecordIO reads/decodes vs MXNet; views: read+decode+training views; loader: "
        "DataLoader images/s per worker count; index: .idx memory; all: every one",
    )
    parser.add_argument(
        "--view-images", type=int, default=5_000, help="records timed per view recipe in the views section"
    )
    parser.add_argument("--repeat", type=int, default=3, help="views section: rounds timed, the best is printed")
    parser.add_argument("--profile", action="store_true", help="views section: cProfile the lh pipeline")
    parser.add_argument("--mxnet-python", type=Path, help="python of a venv with mxnet (default: <repo>/.mxnet-venv)")
    parser.add_argument("--no-mxnet", action="store_true", help="do not run the MXNet comparison")
    parser.add_argument(
        "--workers",
        type=lambda text: [int(w) for w in text.split(",")],
        default=[0, 1, 2],
        help="loader section: comma-separated worker counts to time",
    )
    parser.add_argument("--loader-batch", type=int, default=64, help="loader section: source images per batch")
    parser.add_argument("--loader-batches", type=int, default=20, help="loader section: batches timed")
    parser.add_argument(
        "--index-records",
        type=int,
        default=12_700_000,
        help="index section: records of the synthetic .idx (WebFace12M: 12.7 M)",
    )
    parser.add_argument("--measure-index", nargs=3, metavar=("KIND", "REC", "IDX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_index:  # the index section's fresh measuring process
        kind, rec, idx = args.measure_index
        print(json.dumps(measure_index(kind, Path(rec), Path(idx))))
        return
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        section = "io" if args.only_io else args.section
        if section == "index":
            section_index(args, directory)
            return
        rec, idx = make_dataset(directory, args.num, args.per_identity, args.seed)
        if section in ("all", "io"):
            section_io(args, rec, idx)
        if section in ("all", "views"):
            section_views(args, rec, idx)
        if section in ("all", "loader"):
            section_loader(args, rec)
        if section in ("all", "index"):
            section_index(args, directory)


if __name__ == "__main__":
    main()
