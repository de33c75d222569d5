"""RecordIO pack/unpack, writer and reader: on-disk bytes, round trips, errors, atomicity, workers."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from qgface.data.insightface_rec import identity_of, read_insightface_header, write_insightface_rec
from qgface.data.irheader import IRHeader, pack, unpack
from qgface.data.recordio import RecordIOError, RecordIOReader, RecordIOWriter

MAGIC = b"\x0a\x23\xd7\xce"  # 0xced7230a, little endian


def chunk(cflag: int, data: bytes) -> bytes:
    """A dmlc chunk written out by hand from the format description."""
    return MAGIC + struct.pack("<I", cflag << 29 | len(data)) + data + b"\0" * (-len(data) % 4)


def write_pair(tmp_path, records, name="d"):
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    with RecordIOWriter(rec, idx) as w:
        for key, payload in records:
            w.write(key, payload)
    return rec, idx


# ---- pack / unpack ---------------------------------------------------------------------------


def test_pack_scalar_label_is_flag_zero_float32():
    out = pack(IRHeader(7, 3.5, 11, 12), b"jpeg")
    assert out == struct.pack("<IfQQ", 0, 3.5, 11, 12) + b"jpeg"
    header, payload = unpack(out)
    assert header == IRHeader(0, 3.5, 11, 12) and payload == b"jpeg"
    assert unpack(pack(IRHeader(0, np.float32(2.0), 0, 0), b""))[0].label == 2.0


def test_pack_array_label_stored_after_header():
    out = pack(IRHeader(0, [1.5, 2, -3], 4, 5), b"xy")
    assert out == struct.pack("<IfQQ", 3, 0.0, 4, 5) + np.array([1.5, 2, -3], "<f4").tobytes() + b"xy"
    header, payload = unpack(out)
    assert header.flag == 3 and header.label.dtype == np.float32
    np.testing.assert_array_equal(header.label, [1.5, 2, -3])
    assert (header.id, header.id2, payload) == (4, 5, b"xy")
    assert identity_of(header) == 1 and identity_of(IRHeader(0, 42.0, 0, 0)) == 42


def test_unpack_short_record_raises():
    with pytest.raises(RecordIOError, match="shorter than the 24-byte"):
        unpack(b"\0" * 10)
    with pytest.raises(RecordIOError, match="3 float32 labels"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8)


# ---- exact on-disk bytes ---------------------------------------------------------------------


def test_file_bytes_match_the_dmlc_layout(tmp_path):
    records = [
        (0, b"abcde"),  # plain record, 3 padding bytes
        (1, b"abcd" + MAGIC + b"e"),  # magic at aligned offset 4: split, magic dropped
        (2, MAGIC + b"xy" + MAGIC),  # aligned at 0; the second is at offset 6: unaligned, kept
        (3, b""),
    ]
    rec, idx = write_pair(tmp_path, records)
    expected = [
        chunk(0, b"abcde"),
        chunk(1, b"abcd") + chunk(3, b"e"),
        chunk(1, b"") + chunk(3, b"xy" + MAGIC),
        chunk(0, b""),
    ]
    assert rec.read_bytes() == b"".join(expected)
    offsets = np.cumsum([0] + [len(e) for e in expected[:-1]])
    assert idx.read_bytes() == b"".join(b"%d\t%d\n" % (k, o) for k, o in zip(range(4), offsets))


def test_three_chunk_split(tmp_path):
    payload = b"abcd" + MAGIC + b"efgh" + MAGIC + b"ij"
    rec, idx = write_pair(tmp_path, [(9, payload)])
    assert rec.read_bytes() == chunk(1, b"abcd") + chunk(2, b"efgh") + chunk(3, b"ij")
    with RecordIOReader(rec, idx) as r:
        assert r.read(9) == payload


# ---- round trips -----------------------------------------------------------------------------


def test_round_trip_many_payloads(tmp_path):
    rng = np.random.default_rng(0)
    payloads = [
        b"",
        b"a",
        b"ab",
        b"abc",
        MAGIC,
        MAGIC * 3,
        b"x" + MAGIC,
        b"xy" + MAGIC + b"z",
        b"xyz" + MAGIC,
        MAGIC + b"q",
        b"1234" + MAGIC,
        b"12345678" + MAGIC + MAGIC + b"9",
        MAGIC[:3],
        MAGIC[1:] + MAGIC,
        rng.bytes(3_000_001),  # large, odd length
        rng.bytes(4000) + MAGIC + rng.bytes(1) + MAGIC + rng.bytes(998) + MAGIC,
        pack(IRHeader(0, [1.0, 2.0], 3, 4), MAGIC + b"jpeg"),
    ]
    keys = [int(k) for k in rng.permutation(1000)[: len(payloads)]]
    rec, idx = write_pair(tmp_path, list(zip(keys, payloads)))
    with RecordIOReader(rec, idx) as r:
        assert r.keys == keys and len(r) == len(payloads)
        for key, payload in zip(keys, payloads):
            assert key in r
            assert r.read(key) == payload
        assert list(r) == payloads
        assert 100_000 not in r


def test_keys_in_any_idx_order(tmp_path):
    rec, idx = write_pair(tmp_path, [(5, b"five"), (1, b"one"), (3, b"three")])
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([lines[2], lines[0], lines[1]]) + "\n\n")  # shuffled, trailing blank line
    r = RecordIOReader(rec, idx)
    assert r.keys == [3, 5, 1]
    assert [r.read(k) for k in (1, 3, 5)] == [b"one", b"three", b"five"]
    assert list(r) == [b"three", b"five", b"one"]
    r.close()


def test_empty_pair(tmp_path):
    rec, idx = write_pair(tmp_path, [])
    assert rec.read_bytes() == b"" and idx.read_bytes() == b""
    r = RecordIOReader(rec, idx)
    assert len(r) == 0 and list(r) == []


# ---- bad input -------------------------------------------------------------------------------


def test_missing_idx(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"x")])
    idx.unlink()
    with pytest.raises(RecordIOError, match=r"d\.idx: index of .*d\.rec not found"):
        RecordIOReader(rec, idx)


@pytest.mark.parametrize("line", [b"1 2 3", b"one\t0", b"1", b"2\t-8"])
def test_malformed_idx_line_names_line_number(tmp_path, line):
    rec, idx = write_pair(tmp_path, [(0, b"x")])
    idx.write_bytes(idx.read_bytes() + line + b"\n")
    with pytest.raises(RecordIOError, match=r"d\.idx: line 2: expected 'key<TAB>byte offset'"):
        RecordIOReader(rec, idx)


def test_duplicate_key_in_idx(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"x")])
    idx.write_bytes(b"0\t0\n0\t0\n")
    with pytest.raises(RecordIOError, match="line 2: duplicate key 0"):
        RecordIOReader(rec, idx)


def test_writer_refuses_duplicate_key_and_leaves_nothing(tmp_path):
    with pytest.raises(RecordIOError, match=r"d\.rec: duplicate key 4 \(first written at byte offset 12\)"):
        write_pair(tmp_path, [(3, b"a"), (4, b"b"), (4, b"c")])
    assert list(tmp_path.iterdir()) == []


def test_wrong_magic_names_file_key_offset(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"first"), (1, b"second")])
    data = bytearray(rec.read_bytes())
    data[16:20] = b"JUNK"  # the magic of key 1
    rec.write_bytes(bytes(data))
    r = RecordIOReader(rec, idx)
    assert r.read(0) == b"first"
    with pytest.raises(
        RecordIOError,
        match=r"d\.rec: key 1: no record starts at byte offset 16 "
        r"\(found 0x4b4e554a, expected the RecordIO magic 0xced7230a\)",
    ):
        r.read(1)


def test_idx_offset_not_at_a_record(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"abcdefgh"), (1, b"abcd" + MAGIC + b"e")])
    idx.write_text("0\t4\n1\t16\n2\t28\n")  # 4: inside record 0; 28: the second chunk of record 1
    r = RecordIOReader(rec, idx)
    assert r.read(1) == b"abcd" + MAGIC + b"e"
    with pytest.raises(RecordIOError, match=r"key 0: no record starts at byte offset 4"):
        r.read(0)
    with pytest.raises(RecordIOError, match=r"key 2: byte offset 28 holds the middle or end \(cflag 3\)"):
        r.read(2)


def test_truncated_record_and_offset_past_end(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"x" * 40), (7, b"y" * 40)])
    rec.write_bytes(rec.read_bytes()[:70])
    idx.write_text(idx.read_text() + "8\t96\n")
    r = RecordIOReader(rec, idx)
    assert r.read(0) == b"x" * 40
    with pytest.raises(
        RecordIOError,
        match=r"d\.rec: key 7: record at byte offset 48 needs 48 bytes but "
        r"the file ends at 70: the \.rec is truncated",
    ):
        r.read(7)
    with pytest.raises(RecordIOError, match=r"key 8: byte offset 96 is past the end of the 70-byte file"):
        r.read(8)


def test_truncated_split_record(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"abcd" + MAGIC + b"efgh")])
    rec.write_bytes(rec.read_bytes()[:14])
    with pytest.raises(RecordIOError, match=r"key 0: byte offset 12 is past the end of the 14-byte file"):
        RecordIOReader(rec, idx).read(0)


def test_unknown_key(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"x")])
    with pytest.raises(RecordIOError, match=r"d\.rec: unknown key 5 \(the \.idx .*d\.idx has 1 keys\)"):
        RecordIOReader(rec, idx).read(5)


def test_missing_rec(tmp_path):
    with pytest.raises(RecordIOError, match=r"nope\.rec: RecordIO data file not found"):
        RecordIOReader(tmp_path / "nope.rec", tmp_path / "nope.idx")


# ---- atomicity -------------------------------------------------------------------------------


def test_exception_inside_with_keeps_previous_pair(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, b"old"), (1, b"pair")])
    before = rec.read_bytes(), idx.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with RecordIOWriter(rec, idx) as w:
            w.write(0, b"new" * 1000)
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))  # temps exist
            raise KeyboardInterrupt
    assert (rec.read_bytes(), idx.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.idx", "d.rec"]
    write_pair(tmp_path, [(2, b"replaced")])
    assert RecordIOReader(rec, idx).keys == [2]


# ---- DataLoader workers ----------------------------------------------------------------------


class _RecDataset(Dataset):
    def __init__(self, reader: RecordIOReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.reader.read(self.reader.keys[i])), dtype=torch.uint8)


def test_reader_in_forked_dataloader_workers(tmp_path):
    payloads = [bytes([i]) * 64 + MAGIC * (i % 3) for i in range(24)]
    rec, idx = write_pair(tmp_path, list(enumerate(payloads)))
    reader = RecordIOReader(rec, idx)
    assert reader.read(3) == payloads[3]  # the parent maps the file before forking
    loader = DataLoader(_RecDataset(reader), batch_size=None, num_workers=2, multiprocessing_context="fork")
    assert [bytes(t.numpy()) for t in loader] == payloads
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(23) == payloads[23] and reader.read(0) == payloads[0]


# ---- InsightFace layout ----------------------------------------------------------------------


def test_insightface_layout(tmp_path):
    items = [(b"img%d" % i, label) for i, label in enumerate([0, 0, 0, 1, 2, 2])]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    assert write_insightface_rec(rec, idx, iter(items)) == (6, 3)
    r = RecordIOReader(rec, idx)
    assert sorted(r.keys) == list(range(10))
    header, payload = unpack(r.read(0))
    assert header.flag == 2 and list(header.label) == [7, 10] and payload == b""
    assert read_insightface_header(r) == (1, 7)
    for key in range(1, 7):
        header, payload = unpack(r.read(key))
        assert (header.flag, identity_of(header), header.id, payload) == (0, items[key - 1][1], key, items[key - 1][0])
    ranges = [tuple(unpack(r.read(k))[0].label) for k in range(7, 10)]
    assert ranges == [(1, 4), (4, 5), (5, 7)]


@pytest.mark.parametrize("labels", [[0, 2], [1, 1], [0, 1, 0]])
def test_insightface_writer_rejects_bad_labels(tmp_path, labels):
    with pytest.raises(ValueError, match="identities must be 0, 1, 2"):
        write_insightface_rec(tmp_path / "t.rec", tmp_path / "t.idx", [(b"x", lab) for lab in labels])
    assert list(tmp_path.iterdir()) == []


def test_header_missing(tmp_path):
    rec, idx = write_pair(tmp_path, [(0, pack(IRHeader(0, 3.0, 0, 0), b"jpeg"))])
    with pytest.raises(RecordIOError, match=r"key 0: record 0 has flag 0, not the InsightFace header"):
        read_insightface_header(RecordIOReader(rec, idx))
