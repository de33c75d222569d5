"""Compress a benchmark into ``<name>.rec/.idx`` + ``<name>.manifest.json`` and check it (docs/method.md §8).

Record ``i`` holds ``pack(IRHeader(flag, label_i, i, 0), bytes_i)`` where ``bytes_i`` are exactly the bytes
:meth:`Benchmark.load_bytes` returns for image ``i`` of the canonical list (the raw file / ``.bin``
bytes as distributed, never re-encoded; for IJB the loose crop) and ``label_i`` is
:meth:`Benchmark.record_label`: the record label, or for IJB the float32 array of its 5 landmarks and
detector score (``flag`` = 11; the image is aligned when read, docs/method.md §8). The manifest names the format
version, the benchmark and its ``params``, the list and its SHA-256, the SHA-256 of all record payloads,
and the ``.rec`` size and ``.idx`` SHA-256 it describes.

Safety: the old manifest is removed first and the new one written LAST (atomically), after the
``.rec``/``.idx`` pair was renamed into place, so a ``.rec`` without a manifest (a killed compression)
is never used: the next run recompresses it. Leftover temporary files are deleted. An ``fcntl.flock``
on ``<name>.lock`` lets one of several concurrent processes compress while the others wait and then
find the files up to date. An up-to-date pair is never rewritten. A manifest that does not match the
protocol is refused with :class:`StaleRecError`: delete the three files (or pass ``force``) to rebuild.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from qgface.atomic import atomic_write_text
from qgface.data.irheader import IRHeader, pack, unpack
from qgface.data.recordio import RecordIOReader, RecordIOWriter
from qgface.data.workers import worker_options
from qgface.eval.benchmarks.base import Benchmark

__all__ = [
    "MANIFEST_VERSION",
    "RecordSource",
    "StaleRecError",
    "check_rec",
    "compress_benchmark",
    "open_source",
    "rec_files",
    "verify_data",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class StaleRecError(RuntimeError):
    """A compressed benchmark exists but does not match the protocol (message says what to do)."""


def rec_files(name: str, rec_dir: str | Path) -> dict[str, Path]:
    """Paths of the ``rec``, ``idx``, ``manifest`` and ``lock`` files of benchmark ``name``."""
    rec_dir = Path(rec_dir)
    return {
        "rec": rec_dir / f"{name}.rec",
        "idx": rec_dir / f"{name}.idx",
        "manifest": rec_dir / f"{name}.manifest.json",
        "lock": rec_dir / f"{name}.lock",
    }


def _sha256_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_rec(benchmark: Benchmark, rec_dir: str | Path) -> Path | None:
    """The ``.rec`` path when an up-to-date compressed copy exists, ``None`` when there is none (no
    manifest, or no ``.rec``/``.idx`` beside it), and :class:`StaleRecError` when it does not match."""
    files = rec_files(benchmark.rec_name or benchmark.name, rec_dir)
    if not (files["manifest"].is_file() and files["rec"].is_file() and files["idx"].is_file()):
        return None
    try:
        manifest = json.loads(files["manifest"].read_text())
    except (OSError, ValueError) as exc:
        _refuse(files, f"the manifest is unreadable ({exc})")
    expected = {
        "format_version": MANIFEST_VERSION,
        "benchmark": benchmark.rec_name or benchmark.name,
        "params": benchmark.params,
        "num_records": len(benchmark),
        "list_sha256": _sha256_lines(benchmark.image_names),
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            detail = ""
            if key == "list_sha256":
                old = manifest.get("list") or []
                first = next(
                    (i for i, (a, b) in enumerate(zip(old, benchmark.image_names)) if a != b),
                    min(len(old), len(benchmark)),
                )
                detail = f" (first difference at image {first})"
            _refuse(files, f"{key} is {manifest.get(key)!r} but the protocol needs {value!r}{detail}")
    if manifest.get("rec_size") != files["rec"].stat().st_size:
        _refuse(
            files, f"the .rec has {files['rec'].stat().st_size} bytes, the manifest says {manifest.get('rec_size')}"
        )
    if manifest.get("idx_sha256") != _sha256_file(files["idx"]):
        _refuse(files, "the .idx is not the one the manifest describes")
    return files["rec"]


def _refuse(files: dict[str, Path], why: str) -> None:
    raise StaleRecError(
        f"{files['rec']} does not match the benchmark's protocol: {why}. Delete {files['rec']}, "
        f"{files['idx']} and {files['manifest']} (or run tools/compress_valset.py --force) to recompress."
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _BytesDataset(Dataset):
    def __init__(self, benchmark: Benchmark) -> None:
        self.benchmark = benchmark

    def __len__(self) -> int:
        return len(self.benchmark)

    def __getitem__(self, index: int) -> bytes:
        return self.benchmark.load_bytes(index)


def _identity(item: bytes) -> bytes:
    return item


def compress_benchmark(benchmark: Benchmark, rec_dir: str | Path, *, num_workers: int = 0, force: bool = False) -> Path:
    """Write ``<rec_dir>/<name>.rec/.idx/.manifest.json`` unless up to date; returns the ``.rec`` path.

    ``num_workers`` processes read (and, for IJB, align) the images in order. ``force`` rebuilds
    even a mismatching or up-to-date copy.
    """
    files = rec_files(benchmark.rec_name or benchmark.name, rec_dir)
    files["rec"].parent.mkdir(parents=True, exist_ok=True)
    with _locked(files["lock"]):
        if not force:
            if (rec := check_rec(benchmark, rec_dir)) is not None:
                log.info("%s is up to date", rec)
                return rec
        files["manifest"].unlink(missing_ok=True)  # before the .rec changes: a crash leaves no manifest
        _remove_leftovers(files)
        loader = DataLoader(
            _BytesDataset(benchmark), batch_size=None, collate_fn=_identity, **worker_options(num_workers)
        )
        data_digest = hashlib.sha256()
        with RecordIOWriter(files["rec"], files["idx"]) as writer:
            for i, payload in enumerate(tqdm(loader, desc=f"compress {benchmark.name}", mininterval=5, unit="img")):
                data_digest.update(struct.pack("<Q", len(payload)))
                data_digest.update(payload)
                label = benchmark.record_label(i)
                flag = 0 if isinstance(label, float) else int(np.asarray(label).size)
                writer.write(i, pack(IRHeader(flag, label, i, 0), payload))
        manifest = {
            "format_version": MANIFEST_VERSION,
            "benchmark": benchmark.rec_name or benchmark.name,
            "params": benchmark.params,
            "num_records": len(benchmark),
            "list_sha256": _sha256_lines(benchmark.image_names),
            "data_sha256": data_digest.hexdigest(),
            "rec_size": files["rec"].stat().st_size,
            "idx_sha256": _sha256_file(files["idx"]),
            "list": benchmark.image_names,
        }
        atomic_write_text(files["manifest"], json.dumps(manifest, indent=1))
        log.info("compressed %s: %d images into %s", benchmark.name, len(benchmark), files["rec"])
        return files["rec"]


def _remove_leftovers(files: dict[str, Path]) -> None:
    """Temporary files of killed writers (``.<name>.rec.*.tmp`` etc.; see ``qgface.atomic``)."""
    for key in ("rec", "idx", "manifest"):
        for tmp in files[key].parent.glob(f".{files[key].name}.*.tmp"):
            log.info("removing leftover %s", tmp)
            tmp.unlink(missing_ok=True)


class RecordSource:
    """Image bytes by canonical index from a compressed benchmark (picklable for DataLoader workers)."""

    def __init__(self, rec_path: str | Path) -> None:
        rec_path = Path(rec_path)
        self.reader = RecordIOReader(rec_path, rec_path.with_suffix(".idx"))

    def load_bytes(self, index: int) -> bytes:
        return unpack(self.reader.read(index))[1]


def open_source(
    benchmark: Benchmark, rec_dir: str | Path, *, compress: bool = True, num_workers: int = 0
) -> tuple[RecordSource | Benchmark, str]:
    """Where to read images from: ``(source, description)``.

    An up-to-date ``.rec`` is used; a mismatching one is refused (:class:`StaleRecError`); without
    one, the benchmark is compressed first when ``compress`` (falling back to the image files when the
    folder is not writable), else the image files are read directly.
    """
    rec = check_rec(benchmark, rec_dir)
    if rec is None and compress:
        try:
            rec = compress_benchmark(benchmark, rec_dir, num_workers=num_workers)
        except OSError as exc:  # read-only or full file system: evaluate from the files instead
            log.warning("cannot compress %s into %s (%s); reading the image files", benchmark.name, rec_dir, exc)
    if rec is None:
        return benchmark, f"files under {benchmark.data_root}"
    return RecordSource(rec), str(rec)


def verify_data(benchmark: Benchmark, rec_dir: str | Path) -> bool:
    """Recompute the SHA-256 of every record payload and compare with the manifest (slow: reads all)."""
    files = rec_files(benchmark.rec_name or benchmark.name, rec_dir)
    manifest = json.loads(files["manifest"].read_text())
    source = RecordSource(files["rec"])
    digest = hashlib.sha256()
    for i in range(len(benchmark)):
        payload = source.load_bytes(i)
        digest.update(struct.pack("<Q", len(payload)))
        digest.update(payload)
    return digest.hexdigest() == manifest.get("data_sha256")
