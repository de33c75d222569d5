#!/usr/bin/env python3
"""Pack a folder of aligned identity folders into an InsightFace ``train.rec``/``train.idx``.

    python -m qgface.align raw_photos/ aligned/          # when the photos are not aligned yet
    python tools/make_rec.py aligned/ data/mine --workers 4
    python -m qgface.train configs/qgface.yaml data.root=data/mine

SRC holds ``<identity>/<image>`` with aligned 112x112 crops; identities get the labels 0, 1, 2, ...
in sorted name order (listed in ``OUT/identities.csv``). The records are laid out as InsightFace
writes them: images ``1..N`` labelled with their identity, record 0 the header ``[N+1, N+1+I]``,
then one record per identity with its ``[first, end)`` image keys (qgface.data.recordio). JPEG files
are stored byte for byte; other formats are re-encoded as JPEG (quality 95).

Workers pack chunks of images in parallel into ``OUT/.make_rec/``; an interrupted or failed run
keeps its finished chunks, and running the same command again reuses them (as long as SRC lists
the same files with the same sizes and times), then merges them into the final pair.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import multiprocessing
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qgface.atomic import atomic_write_text
from qgface.data.images import decode_bgr, encode_jpeg
from qgface.data.insightface_rec import write_insightface_rec
from qgface.data.irheader import IRHeader, pack, unpack
from qgface.data.recordio import RecordIOReader, RecordIOWriter
from qgface.infer.files import list_images

log = logging.getLogger("make_rec")

STAGING = ".make_rec"
ALIGNED_SHAPE = (112, 112, 3)


def plan(src: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Identity names and ``(relative image path, label)`` for every image, in record order."""
    items: list[tuple[str, int]] = []
    names: list[str] = []
    for rel in list_images(src):
        if len(rel.parts) != 2:
            raise ValueError(f"{src / rel}: expected SRC/<identity>/<image>, one folder level deep")
        if not names or names[-1] != rel.parts[0]:
            names.append(rel.parts[0])
        items.append((rel.as_posix(), len(names) - 1))
    if not items:
        raise ValueError(f"{src} holds no images in <identity>/<image> folders")
    return names, items


def _fingerprint(src: Path, items: list[tuple[str, int]], chunk_size: int) -> str:
    digest = hashlib.sha256(str(chunk_size).encode())
    for rel, label in items:
        stat = (src / rel).stat()
        digest.update(f"{rel}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _jpeg_of(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        image = decode_bgr(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if image.shape != ALIGNED_SHAPE:
        raise ValueError(
            f"{path} is {image.shape[1]}x{image.shape[0]}, not an aligned 112x112 face: align the "
            "folder first (python -m qgface.align SRC DST)"
        )
    return data if data[:2] == b"\xff\xd8" else encode_jpeg(image)


def pack_chunk(job: tuple[Path, Path, list[tuple[str, int]]]) -> Path:
    """Write one chunk's images as a small .rec/.idx pair (keys 0..n-1); returns its .rec path."""
    src, rec, items = job
    with RecordIOWriter(rec, rec.with_suffix(".idx")) as writer:
        for key, (rel, label) in enumerate(items):
            writer.write(key, pack(IRHeader(0, float(label), 0, 0), _jpeg_of(src / rel)))
    return rec


def _merged(chunks: list[Path]) -> Iterator[tuple[bytes, int]]:
    for rec in chunks:
        with RecordIOReader(rec, rec.with_suffix(".idx")) as reader:
            for key in range(len(reader)):
                header, payload = unpack(reader.read(key))
                yield payload, int(header.label)


def make_rec(
    src: str | Path, out: str | Path, *, workers: int = 1, chunk_size: int = 1000, progress: bool = True
) -> tuple[int, int]:
    """Build ``out/train.rec``/``train.idx`` and ``out/identities.csv``; returns ``(images, identities)``."""
    src, out = Path(src), Path(out)
    names, items = plan(src)
    staging = out / STAGING
    fingerprint = _fingerprint(src, items, chunk_size)
    marker = staging / "plan.sha256"
    if staging.exists() and (not marker.is_file() or marker.read_text() != fingerprint):
        log.info("%s belongs to another source listing: starting afresh", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, fingerprint)
    jobs = [
        (src, staging / f"chunk_{k:06d}.rec", items[start : start + chunk_size])
        for k, start in enumerate(range(0, len(items), chunk_size))
    ]
    todo = [job for job in jobs if not (job[1].is_file() and job[1].with_suffix(".idx").is_file())]
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d chunks already packed", len(jobs) - len(todo), len(jobs))
    bar = dict(total=len(todo), desc="pack", unit="chunk", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(pack_chunk, todo), **bar):
                pass
    else:
        for job in tqdm(todo, **bar):
            pack_chunk(job)
    counts = write_insightface_rec(out / "train.rec", out / "train.idx", _merged([job[1] for job in jobs]))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["label", "identity", "images"])
    per_label = np.bincount([label for _, label in items], minlength=len(names))
    writer.writerows((k, name, int(per_label[k])) for k, name in enumerate(names))
    atomic_write_text(out / "identities.csv", table.getvalue())
    shutil.rmtree(staging)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder of <identity>/<image> aligned 112x112 crops")
    parser.add_argument("out", help="output folder for train.rec, train.idx and identities.csv")
    parser.add_argument("--workers", type=int, default=1, help="parallel packing processes (default 1)")
    parser.add_argument("--chunk-size", type=int, default=1000, help="images per resumable chunk (default 1000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.chunk_size < 1:
        parser.error(f"--chunk-size must be >= 1, got {args.chunk_size}")
    try:
        images, identities = make_rec(
            args.src, args.out, workers=args.workers, chunk_size=args.chunk_size, progress=not args.no_progress
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"make_rec: error: {exc} (finished chunks are kept: run again to resume)", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out) / 'train.rec'}: {images} images of {identities} identities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
