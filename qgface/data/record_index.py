"""The ``.idx`` of an indexed RecordIO file as compact numpy arrays: key -> byte offset.

A training set of WebFace12M size has 12.7 M records. Held as a Python dict (or list of ints) the
index costs ~125 bytes per record (measured) in every process that opens it (each rank and each spawned loader
worker); here it costs 8 bytes per record when the keys are dense (``0..N``, the
InsightFace layout: one int64 offset per key in a table, -1 for a missing key) and 16 when they are
not (keys sorted, with their offsets; a lookup is a binary search). The order of the ``.idx`` lines
is kept only when it differs from the order of the offsets (every writer writes both in the same
order); otherwise it is recovered from the offsets when asked for. Pickled, the arrays travel as
their buffers (no per-record Python objects); after :meth:`RecordIndex.share_memory` they sit in
shared memory, and a spawned ``DataLoader`` worker receives a handle to them instead of a copy.

Parsing is vectorised (the line structure is checked with array operations, the numbers read by
``np.fromstring``), piece by piece; a malformed file is read again line by line for an error naming
the line.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RecordIndex", "parse_idx"]

_DENSE_SLACK = 2
"""a key table is used while max key + 1 <= _DENSE_SLACK x records (at most half its slots empty)"""
_PIECE_BYTES = 16 << 20
"""the .idx text is parsed in pieces of about this many bytes (whole lines)"""
_ALLOWED = np.zeros(256, bool)
_ALLOWED[list(b"0123456789-\t\n\r ")] = True
_SPACE = np.zeros(256, bool)
_SPACE[list(b"\t\n\r ")] = True


_ARRAY_FIELDS = ("_line_keys", "_table", "_sorted_keys", "_sorted_offsets")


class RecordIndex:
    """Byte offset of every key of a ``.idx``; ``keys()`` lists them in ``.idx`` line order."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        """``keys`` and ``offsets`` (int64, in ``.idx`` line order, keys unique, offsets >= 0)."""
        keys = np.asarray(keys, np.int64)
        offsets = np.asarray(offsets, np.int64)
        n = len(keys)
        self._size = n
        self._shared: dict[str, torch.Tensor] = {}  # array name -> its shared-memory tensor (share_memory)
        monotone = n < 2 or bool(np.all(offsets[1:] > offsets[:-1]))
        self._line_keys = None if monotone else keys.copy()
        self._table = self._sorted_keys = self._sorted_offsets = None
        if n and keys.min() >= 0 and int(keys.max()) + 1 <= _DENSE_SLACK * n:
            self._table = np.full(int(keys.max()) + 1, -1, np.int64)
            self._table[keys] = offsets
        else:
            order = np.argsort(keys, kind="stable")
            self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]

    def offset(self, key: int) -> int | None:
        """The byte offset of ``key``, or None when the ``.idx`` has no such key."""
        if self._table is not None:
            if 0 <= key < len(self._table):
                value = int(self._table[key])
                return value if value >= 0 else None
            return None
        pos = int(np.searchsorted(self._sorted_keys, key))
        if pos < self._size and int(self._sorted_keys[pos]) == key:
            return int(self._sorted_offsets[pos])
        return None

    def keys(self) -> np.ndarray:
        """Every key (int64), in the order of the ``.idx`` lines."""
        if self._line_keys is not None:
            return self._line_keys.copy()
        if self._table is not None:
            present = np.flatnonzero(self._table >= 0)
            return present[np.argsort(self._table[present], kind="stable")]
        return self._sorted_keys[np.argsort(self._sorted_offsets, kind="stable")]

    def nbytes(self) -> int:
        """Bytes held by the arrays (what one process pays for this index)."""
        return sum(getattr(self, name).nbytes for name in _ARRAY_FIELDS if getattr(self, name) is not None)

    def share_memory(self) -> None:
        """Move the arrays into shared memory: a ``DataLoader`` worker then maps them instead of
        receiving a copy (torch's multiprocessing pickler sends a handle to a shared tensor)."""
        for name in _ARRAY_FIELDS:
            array = getattr(self, name)
            if array is not None and name not in self._shared:
                self._shared[name] = torch.from_numpy(array).clone().share_memory_()
                setattr(self, name, self._shared[name].numpy())  # a view: the tensor's memory

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(self._shared)  # the shared tensors travel in place of their numpy views
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name, tensor in self._shared.items():
            setattr(self, name, tensor.numpy())

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (int, np.integer)) and self.offset(int(key)) is not None


def parse_idx(text: bytes, where: str) -> RecordIndex:
    """The index of ``.idx`` bytes (``key<TAB>offset`` lines, any key order, blank lines ignored).

    ``where`` names the file in errors, raised as ``ValueError`` with the 1-based line number. The
    text is parsed in pieces of about ``_PIECE_BYTES``, so the temporary arrays of the parse stay
    small next to the index itself.
    """
    keys, offsets = [], []
    pos = 0
    while pos < len(text):
        end = text.find(b"\n", pos + _PIECE_BYTES)
        end = len(text) if end < 0 else end + 1
        values = _parse_piece(text[pos:end])
        if values is None:
            return _parse_lines(text, where)  # malformed: the line parser names the line
        keys.append(values[0::2].copy())
        offsets.append(values[1::2].copy())
        pos = end
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    all_offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
    del keys, offsets
    sorted_keys = np.sort(all_keys)
    if np.any(all_offsets < 0) or np.any(sorted_keys[1:] == sorted_keys[:-1]):
        return _parse_lines(text, where)  # a negative offset or a duplicate key: named by line
    del sorted_keys
    return RecordIndex(all_keys, all_offsets)


def _parse_piece(text: bytes) -> np.ndarray | None:
    """``[key, offset, key, offset, ...]`` of whole lines, or None unless every line holds 0 or 2 integers."""
    data = np.frombuffer(text, np.uint8)
    if not _ALLOWED[data].all():
        return None
    space = _SPACE[data]
    token_start = np.flatnonzero(~space & np.concatenate(([True], space[:-1])))
    if not len(token_start):
        return np.zeros(0, np.int64)
    line_of_token = np.searchsorted(np.flatnonzero(data == ord("\n")), token_start, side="left")
    tokens_per_line = np.bincount(line_of_token)
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    if np.any((tokens_per_line != 0) & (tokens_per_line != 2)) or len(values) != len(token_start):
        return None
    return values


def _parse_lines(text: bytes, where: str) -> RecordIndex:
    """Line-by-line parse of a ``.idx`` that the vectorised parser refused, for an exact error."""
    keys: list[int] = []
    offsets: list[int] = []
    seen: dict[int, int] = {}
    for line_no, line in enumerate(text.split(b"\n"), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            key, offset = (int(f) for f in fields)
            if offset < 0:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{where}: line {line_no}: expected 'key<TAB>byte offset' with two integers, got {line[:80]!r}"
            ) from None
        if key in seen:
            raise ValueError(f"{where}: line {line_no}: duplicate key {key} (also at byte offset {seen[key]})")
        seen[key] = offset
        keys.append(key)
        offsets.append(offset)
    return RecordIndex(np.array(keys, np.int64), np.array(offsets, np.int64))
