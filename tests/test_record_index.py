"""The compact RecordIO index: the same answers as a dict of the .idx lines, a few bytes per record."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from qgface.data.record_index import RecordIndex, parse_idx


def idx_text(keys, offsets, sep=b"\t") -> bytes:
    return b"".join(b"%d%s%d\n" % (k, sep, o) for k, o in zip(keys, offsets))


@pytest.mark.parametrize("layout", ["insightface", "sparse", "shuffled_lines", "negative_keys"])
def test_lookups_match_a_dict_of_the_lines(layout):
    rng = np.random.default_rng(0)
    n = 3000
    if layout == "insightface":  # images 1..N, then the header 0, then the identity records
        keys = list(range(1, n - 100)) + [0] + list(range(n - 100, n))
    elif layout == "sparse":
        keys = sorted(rng.choice(10**12, n, replace=False).tolist())
    elif layout == "negative_keys":
        keys = list(range(-50, n - 50))
    else:
        keys = rng.permutation(n).tolist()
    offsets = np.cumsum(rng.integers(8, 5000, n) // 4 * 4).tolist()
    lines = list(zip(keys, offsets))
    if layout == "shuffled_lines":  # hand-edited .idx: line order differs from offset order
        lines = [lines[i] for i in rng.permutation(n)]
    text = idx_text(*zip(*lines)) + b"\n"
    index = parse_idx(text, "x.idx")
    expected = dict(lines)
    assert len(index) == n
    assert index.keys().tolist() == [k for k, _ in lines]  # .idx line order
    probes = list(expected)[:500] + [min(keys) - 1, max(keys) + 1, 10**13]
    for key in probes:
        assert index.offset(key) == expected.get(key)
        assert (key in index) == (key in expected)
    assert index.nbytes() <= (8 if layout == "insightface" else 16) * n + 8 * 64
    clone = pickle.loads(pickle.dumps(index))
    assert clone.offset(keys[7]) == expected[keys[7]]
    assert len(pickle.dumps(index)) < 24 * n  # buffers, not per-record objects


def test_parse_accepts_spaces_crlf_and_blank_lines():
    index = parse_idx(b"\n3 40\r\n\n 1\t8 \n\n", "x.idx")
    assert index.keys().tolist() == [3, 1] and index.offset(1) == 8 and index.offset(3) == 40


@pytest.mark.parametrize(
    "text,message",
    [
        (b"0\t0\n1 2 3\n", "line 2: expected 'key<TAB>byte offset'"),
        (b"0\t0\n\n5\n", "line 3: expected"),
        (b"0\t0\n2\t-8\n", "line 2: expected"),
        (b"0\t0\nx\t4\n", "line 2: expected"),
        (b"0\t0\n1\t4\n\n0\t8\n", r"line 4: duplicate key 0 \(also at byte offset 0\)"),
    ],
)
def test_malformed_lines_are_named(text, message):
    with pytest.raises(ValueError, match=rf"x\.idx: {message}"):
        parse_idx(text, "x.idx")


def test_empty_index():
    index = parse_idx(b"", "x.idx")
    assert len(index) == 0 and index.keys().tolist() == [] and index.offset(0) is None
    assert len(RecordIndex(np.zeros(0, np.int64), np.zeros(0, np.int64))) == 0


def test_a_text_parsed_in_many_pieces_gives_the_same_index(monkeypatch):
    from qgface.data import record_index

    keys = list(range(1, 500)) + [0]
    offsets = [4 * i for i in range(500)]
    text = idx_text(keys, offsets) + b"\n\n" + b"900\t5000\n"
    whole = parse_idx(text, "x.idx")
    monkeypatch.setattr(record_index, "_PIECE_BYTES", 50)  # pieces of a few lines each
    pieces = parse_idx(text, "x.idx")
    assert pieces.keys().tolist() == whole.keys().tolist() == keys + [900]
    assert [pieces.offset(k) for k in keys + [900]] == offsets + [5000]
    with pytest.raises(ValueError, match=r"x\.idx: line 504: duplicate key 7"):
        parse_idx(text + b"7\t12\n", "x.idx")


def test_a_shared_index_reaches_a_worker_as_a_handle_not_a_copy():
    from multiprocessing.reduction import ForkingPickler  # what DataLoader's spawned workers receive

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    n = 100_000
    index = parse_idx(idx_text(range(n), range(0, 4 * n, 4)), "x.idx")
    assert len(ForkingPickler.dumps(index)) > 8 * n  # before: the table's bytes travel
    index.share_memory()
    assert len(ForkingPickler.dumps(index)) < 4096  # after: a handle to the shared memory
    for clone in (pickle.loads(ForkingPickler.dumps(index)), pickle.loads(pickle.dumps(index))):
        assert clone.offset(0) == 0 and clone.offset(n - 1) == 4 * (n - 1) and clone.offset(n) is None
        assert clone.keys().tolist() == list(range(n))
