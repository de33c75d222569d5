"""Compressed benchmarks (docs/method.md §8): order, manifest checks, fallback, crash safety, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from qgface.data.images import encode_jpeg
from qgface.data.irheader import unpack
from qgface.data.recordio import RecordIOReader
from qgface.eval.benchmarks import make_benchmark
from qgface.eval.benchmarks.scface import SCface
from qgface.eval.compress import (
    RecordSource,
    StaleRecError,
    check_rec,
    compress_benchmark,
    open_source,
    rec_files,
    verify_data,
)


def make_scface(root: Path, subjects: int = 3) -> Path:
    rng = np.random.default_rng(0)
    aligned = root / "scface" / "aligned"
    aligned.mkdir(parents=True)
    names = []
    for s in range(1, subjects + 1):
        for name in [f"{s:03d}_frontal.jpg"] + [f"{s:03d}_cam{c}_{d}.jpg" for c in (1, 2, 6) for d in (1, 2, 3)]:
            (aligned / name).write_bytes(encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)))
            names.append(name)
    (root / "scface" / "all.txt").write_text("\n".join(names) + "\n")
    return root


class CountingSCface(SCface):
    """SCface whose every image read is appended to a log file (and takes a little while)."""

    def __init__(self, root: Path, log: Path, delay: float) -> None:
        super().__init__(root)
        self.log, self.delay = log, delay

    def load_bytes(self, index: int) -> bytes:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {index}\n")
        time.sleep(self.delay)
        return super().load_bytes(index)


@pytest.fixture
def root(tmp_path) -> Path:
    return make_scface(tmp_path / "data")


def test_records_hold_the_raw_bytes_in_canonical_order(root, tmp_path):
    bench = make_benchmark("scface", root)
    rec = compress_benchmark(bench, tmp_path / "rec")
    files = rec_files("scface", tmp_path / "rec")
    with RecordIOReader(files["rec"], files["idx"]) as reader:
        assert reader.keys == list(range(len(bench)))
        for i in range(len(bench)):
            header, payload = unpack(reader.read(i))
            assert payload == (root / "scface" / "aligned" / bench.image_names[i]).read_bytes()
            assert header.label == bench.labels[i] and header.id == i
    manifest = json.loads(files["manifest"].read_text())
    assert manifest["list"] == bench.image_names == sorted(bench.image_names)
    assert manifest["num_records"] == len(bench) == 3 * (1 + 6)  # infrared camera 6 is not part of it
    assert check_rec(bench, tmp_path / "rec") == rec
    assert verify_data(bench, tmp_path / "rec")
    source = RecordSource(rec)
    assert all(source.load_bytes(i) == bench.load_bytes(i) for i in range(len(bench)))


def test_up_to_date_files_are_not_rewritten(root, tmp_path):
    bench = make_benchmark("scface", root)
    compress_benchmark(bench, tmp_path)
    files = rec_files("scface", tmp_path)
    before = {k: files[k].stat().st_mtime_ns for k in ("rec", "idx", "manifest")}
    time.sleep(0.01)
    compress_benchmark(make_benchmark("scface", root), tmp_path)
    open_source(make_benchmark("scface", root), tmp_path)
    assert {k: files[k].stat().st_mtime_ns for k in ("rec", "idx", "manifest")} == before


def test_a_changed_protocol_list_is_refused_with_what_to_do(root, tmp_path):
    compress_benchmark(make_benchmark("scface", root), tmp_path)
    listing = root / "scface" / "all.txt"
    listing.write_text("\n".join(listing.read_text().split()[:-4]) + "\n")  # subject 3 loses probes
    changed = make_benchmark("scface", root)
    for call in (
        lambda: check_rec(changed, tmp_path),
        lambda: open_source(changed, tmp_path),
        lambda: compress_benchmark(changed, tmp_path),
    ):
        with pytest.raises(StaleRecError, match=r"scface\.rec does not match.*Delete .*scface\.manifest\.json"):
            call()
    compress_benchmark(changed, tmp_path, force=True)
    assert check_rec(changed, tmp_path) is not None


def test_a_reordered_list_is_refused_naming_the_first_difference(root, tmp_path):
    bench = make_benchmark("scface", root)
    compress_benchmark(bench, tmp_path)
    bench.image_names[3], bench.image_names[4] = bench.image_names[4], bench.image_names[3]
    with pytest.raises(StaleRecError, match="first difference at image 3"):
        check_rec(bench, tmp_path)


def test_a_foreign_idx_is_refused(root, tmp_path):
    bench = make_benchmark("scface", root)
    compress_benchmark(bench, tmp_path)
    idx = rec_files("scface", tmp_path)["idx"]
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    with pytest.raises(StaleRecError, match="the .idx is not the one"):
        open_source(bench, tmp_path)


def test_without_a_rec_evaluation_reads_the_files(root, tmp_path):
    bench = make_benchmark("scface", root)
    source, description = open_source(bench, tmp_path, compress=False)
    assert source is bench and "files" in description
    assert not rec_files("scface", tmp_path)["rec"].exists()


def test_a_rec_without_manifest_and_leftover_temp_files_are_replaced(root, tmp_path):
    bench = make_benchmark("scface", root)
    files = rec_files("scface", tmp_path)
    files["rec"].write_bytes(b"half a file")
    files["idx"].write_text("0\t0\n")
    leftover = tmp_path / ".scface.rec.abc123.tmp"
    leftover.write_bytes(b"junk")
    assert check_rec(bench, tmp_path) is None  # never used without a manifest
    source, _ = open_source(bench, tmp_path)
    assert isinstance(source, RecordSource) and source.load_bytes(0) == bench.load_bytes(0)
    assert not leftover.exists()


def _compress(root: Path, rec_dir: Path, log: Path, delay: float) -> None:
    compress_benchmark(CountingSCface(root, log, delay), rec_dir)


def test_kill_9_during_compression_leaves_nothing_used(root, tmp_path):
    ctx = multiprocessing.get_context("fork")
    log = tmp_path / "reads.log"
    proc = ctx.Process(target=_compress, args=(root, tmp_path / "rec", log, 0.2))
    proc.start()
    deadline = time.time() + 30
    while (not log.exists() or len(log.read_text().splitlines()) < 3) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    files = rec_files("scface", tmp_path / "rec")
    assert not files["manifest"].exists() and not files["rec"].exists()
    bench = make_benchmark("scface", root)
    assert check_rec(bench, tmp_path / "rec") is None
    compress_benchmark(bench, tmp_path / "rec")
    assert verify_data(bench, tmp_path / "rec")
    assert not list((tmp_path / "rec").glob(".*.tmp"))


def test_two_concurrent_processes_compress_once(root, tmp_path):
    ctx = multiprocessing.get_context("fork")
    log = tmp_path / "reads.log"
    procs = [ctx.Process(target=_compress, args=(root, tmp_path / "rec", log, 0.01)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    bench = make_benchmark("scface", root)
    reads = log.read_text().splitlines()
    assert len(reads) == len(bench) and len({r.split()[0] for r in reads}) == 1  # one process read them all
    assert check_rec(bench, tmp_path / "rec") is not None and verify_data(bench, tmp_path / "rec")
    assert not list((tmp_path / "rec").glob(".*.tmp"))
