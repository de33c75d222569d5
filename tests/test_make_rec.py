"""tools/make_rec.py: identity folders -> InsightFace train.rec/.idx, read back by the training dataset."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from qgface.data.datasets import RecordTrainDataset
from qgface.data.images import decode_bgr
from qgface.data.insightface_rec import read_insightface_header
from qgface.data.irheader import unpack
from qgface.data.recordio import RecordIOReader
from qgface.data.synthetic.camera import render_aligned
from qgface.data.synthetic.faces import Variation, make_identity

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_rec", REPO / "tools" / "make_rec.py")
make_rec_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_rec_tool)


@pytest.fixture
def source(tmp_path) -> Path:
    """Three identities: 3, 1 and 2 aligned faces, as JPEG files and one PNG."""
    src = tmp_path / "aligned"
    for number, (name, count) in enumerate((("carol", 3), ("alice", 1), ("bob", 2))):
        (src / name).mkdir(parents=True)
        for k in range(count):
            face = render_aligned(make_identity(5, number), Variation(yaw=0.1 * k, background=k))
            suffix = ".png" if (name, k) == ("bob", 1) else ".jpg"
            cv2.imwrite(str(src / name / f"{k}{suffix}"), face)
    return src


def test_records_are_laid_out_as_insightface_writes_them(source, tmp_path, capsys):
    out = tmp_path / "rec"
    assert make_rec_tool.main([str(source), str(out), "--no-progress"]) == 0
    assert "6 images of 3 identities" in capsys.readouterr().out
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.*"))  # alice, bob, carol
    with RecordIOReader(out / "train.rec", out / "train.idx") as reader:
        assert read_insightface_header(reader) == (1, 7)
        header0, _ = unpack(reader.read(0))
        assert header0.label.tolist() == [7, 10]
        expected_ranges = [(1, 2), (2, 4), (4, 7)]  # alice: key 1; bob: 2-3; carol: 4-6
        for label, (first, end) in enumerate(expected_ranges):
            header, payload = unpack(reader.read(7 + label))
            assert header.label.tolist() == [first, end] and payload == b""
        for key, rel in enumerate(files, start=1):
            header, payload = unpack(reader.read(key))
            label = ["alice", "bob", "carol"].index(rel.split("/")[0])
            assert header.label == label and header.id == key
            if rel.endswith(".jpg"):
                assert payload == (source / rel).read_bytes()  # JPEGs are stored byte for byte
            else:  # the PNG is re-encoded as JPEG: the same face up to compression
                diff = decode_bgr(payload).astype(int) - cv2.imread(str(source / rel)).astype(int)
                assert payload[:2] == b"\xff\xd8" and np.abs(diff).mean() < 2
    with open(out / "identities.csv", newline="") as f:
        assert list(csv.reader(f)) == [
            ["label", "identity", "images"],
            ["0", "alice", "1"],
            ["1", "bob", "2"],
            ["2", "carol", "3"],
        ]
    dataset = RecordTrainDataset(out)
    assert len(dataset) == 6
    assert [dataset[k][1] for k in range(6)] == [0, 1, 1, 2, 2, 2]
    assert not (out / make_rec_tool.STAGING).exists()


def test_a_failed_run_resumes_from_its_finished_chunks(source, tmp_path, capsys):
    out = tmp_path / "rec"
    big = source / "carol" / "2.jpg"
    good = big.read_bytes()
    cv2.imwrite(str(big), np.zeros((200, 150, 3), np.uint8))  # not aligned: the last chunk fails
    assert make_rec_tool.main([str(source), str(out), "--chunk-size", "2", "--no-progress"]) == 1
    assert "carol/2.jpg is 150x200, not an aligned 112x112 face" in capsys.readouterr().err
    staged = sorted((out / make_rec_tool.STAGING).glob("chunk_*.rec"))
    assert [p.name for p in staged] == ["chunk_000000.rec", "chunk_000001.rec"]
    big.write_bytes(good)  # a changed file changes the listing: the next run starts afresh and succeeds
    assert make_rec_tool.main([str(source), str(out), "--chunk-size", "2", "--no-progress"]) == 0
    assert (out / "train.rec").is_file()


def test_resume_reuses_chunks_of_an_unchanged_listing(source, tmp_path, caplog, monkeypatch):
    out = tmp_path / "rec"
    names, items = make_rec_tool.plan(source)
    staging = out / make_rec_tool.STAGING
    staging.mkdir(parents=True)
    (staging / "plan.sha256").write_text(make_rec_tool._fingerprint(source, items, 2))
    make_rec_tool.pack_chunk((source, staging / "chunk_000000.rec", items[:2]))  # as a killed run left it
    packed = []
    real_pack = make_rec_tool.pack_chunk

    def recording_pack(job):
        packed.append(job[1].name)
        return real_pack(job)

    monkeypatch.setattr(make_rec_tool, "pack_chunk", recording_pack)
    with caplog.at_level("INFO", logger="make_rec"):
        assert make_rec_tool.make_rec(source, out, chunk_size=2, progress=False) == (6, 3)
    assert "resuming: 1 of 3 chunks already packed" in caplog.text
    assert packed == ["chunk_000001.rec", "chunk_000002.rec"]
    assert len(RecordTrainDataset(out)) == 6


@pytest.mark.slow
def test_parallel_workers_write_the_same_pair(source, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert make_rec_tool.main([str(source), str(serial), "--chunk-size", "2", "--no-progress"]) == 0
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "make_rec.py"),
            str(source),
            str(parallel),
            "--chunk-size",
            "2",
            "--workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (parallel / "train.rec").read_bytes() == (serial / "train.rec").read_bytes()
    assert (parallel / "train.idx").read_bytes() == (serial / "train.idx").read_bytes()
