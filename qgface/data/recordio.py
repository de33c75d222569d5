"""Indexed RecordIO (``.rec`` + ``.idx``), byte-compatible with MXNet's ``MXIndexedRecordIO``.

Used for InsightFace training sets (``train.rec``) and for compressed validation sets
(docs/method.md §8). MXNet is never imported: the format is small and fixed (DESIGN.md, "RecordIO
without MXNet at run time"); ``tests/test_mxnet_interop.py`` proves byte identity against MXNet.

On-disk format (dmlc-core recordio). Every record is one or more chunks, each
``magic:uint32 | lrec:uint32 | data | zero padding to 4 bytes`` with ``magic = 0xced7230a`` and
``lrec = cflag << 29 | len(data)`` (little endian). A payload that holds the magic word at a
4-byte-aligned offset is split there and the magic word is dropped (cflag 1 = first chunk,
2 = middle, 3 = last; 0 = whole record); the reader puts it back. The ``.idx`` is text, one
``key<TAB>byte offset<LF>`` line per record in write order.

This module is the framing only. Record payloads written by InsightFace/MXNet start with MXNet's
``IRHeader`` (:mod:`qgface.data.irheader`); the InsightFace training layout on top of both is
:mod:`qgface.data.insightface_rec`.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import operator
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qgface.atomic import atomic_open
from qgface.data.record_index import RecordIndex, parse_idx

__all__ = ["MAGIC", "RecordIOError", "RecordIOReader", "RecordIOWriter"]

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK = struct.Struct("<II")  # magic, lrec
_LEN_MASK = (1 << 29) - 1
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class RecordIOError(Exception):
    """A ``.rec``/``.idx`` pair is missing, malformed or inconsistent (message names file/key/offset)."""


def _encode(record: bytes) -> bytes:
    """One record as dmlc chunks (split at 4-byte-aligned magic words), padded to 4 bytes."""
    n = len(record)
    if n > _LEN_MASK:
        raise RecordIOError(f"record of {n} bytes exceeds the RecordIO limit of {_LEN_MASK} bytes")
    parts = []
    start = 0  # first byte of the chunk being built
    hit = record.find(_MAGIC_BYTES)
    while hit >= 0:
        if hit % 4 == 0:
            parts += (_CHUNK.pack(MAGIC, (1 if start == 0 else 2) << 29 | (hit - start)), record[start:hit])
            start = hit + 4
            hit = record.find(_MAGIC_BYTES, start)
        else:
            hit = record.find(_MAGIC_BYTES, hit + 1)
    parts += (_CHUNK.pack(MAGIC, (3 if start else 0) << 29 | (n - start)), record[start:], _PAD[n % 4])
    return b"".join(parts)


class RecordIOWriter:
    """Write a ``.rec``/``.idx`` pair atomically: both appear (``.rec`` renamed first) on a clean
    close, and on an exception the temporary files are removed and any earlier pair is left intact.

    ``with RecordIOWriter(rec, idx) as w: w.write(key, pack(IRHeader(0, label, key, 0), jpeg))``
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        self._offsets: dict[int, int] = {}
        self._pos = 0
        self._stack = contextlib.ExitStack()
        try:  # the stack unwinds in reverse: the .rec temp is renamed before the .idx temp
            self._idx = self._stack.enter_context(atomic_open(self.idx_path, "wb"))
            self._rec = self._stack.enter_context(atomic_open(self.rec_path, "wb"))
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def write(self, key: int, record: bytes) -> None:
        """Append ``record`` under integer ``key`` (keys must be unique)."""
        key = operator.index(key)
        if key in self._offsets:
            raise RecordIOError(
                f"{self.rec_path}: duplicate key {key} (first written at byte offset "
                f"{self._offsets[key]}); every key of a .rec must be unique"
            )
        data = _encode(bytes(record))
        self._rec.write(data)
        self._idx.write(b"%d\t%d\n" % (key, self._pos))
        self._offsets[key] = self._pos
        self._pos += len(data)

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        """Finish the pair: fsync and rename both temporary files into place."""
        self._stack.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard the temporary files, leaving any earlier pair untouched."""
        exc = exc or RuntimeError("RecordIOWriter aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


class RecordIOReader:
    """Random access to a ``.rec`` by key, through ``mmap``.

    The file is mapped lazily on the first read and again in a new process (the PID is checked),
    and pickling drops the map, so one reader can be handed to ``DataLoader`` workers. The ``.idx``
    is held as a :class:`~qgface.data.record_index.RecordIndex` (8-16 bytes per record).
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        if not self.rec_path.is_file():
            raise RecordIOError(f"{self.rec_path}: RecordIO data file not found")
        self.index = _read_idx(self.idx_path, self.rec_path)
        self._keys: list[int] | None = None
        self._file = self._mm = self._pid = None
        self._size = 0

    @property
    def keys(self) -> list[int]:
        """Every key, in ``.idx`` order, as a list built on first use (tools and tests; the training
        dataset never asks, so a 12.7 M-record index stays in :attr:`index`'s arrays)."""
        if self._keys is None:
            self._keys = self.index.keys().tolist()
        return self._keys

    def _open(self) -> None:
        self.close()
        self._file = open(self.rec_path, "rb")
        self._size = os.fstat(self._file.fileno()).st_size
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self._size else b""
        self._pid = os.getpid()

    def read(self, key: int) -> bytes:
        """The record stored under ``key`` (exactly the bytes given to ``RecordIOWriter.write``)."""
        if self._pid != os.getpid():
            self._open()
        offset = self.index.offset(key) if isinstance(key, (int, np.integer)) else None
        if offset is None:
            raise RecordIOError(
                f"{self.rec_path}: unknown key {key!r} (the .idx {self.idx_path} has {len(self.index)} keys)"
            )
        cflag, length = self._chunk_at(key, offset)
        if cflag == 0:
            return self._mm[offset + 8 : offset + 8 + length]
        if cflag != 1:
            raise RecordIOError(
                f"{self.rec_path}: key {key}: byte offset {offset} holds the middle or "
                f"end (cflag {cflag}) of a split record, not a record start; the .idx "
                f"{self.idx_path} does not belong to this .rec"
            )
        parts, pos = [], offset
        while True:
            parts.append(self._mm[pos + 8 : pos + 8 + length])
            pos += 8 + ((length + 3) & ~3)
            if cflag == 3:
                return b"".join(parts)
            parts.append(_MAGIC_BYTES)
            cflag, length = self._chunk_at(key, pos)
            if cflag not in (2, 3):
                raise RecordIOError(
                    f"{self.rec_path}: key {key}: split record starting at byte offset "
                    f"{offset} has chunk flag {cflag} at byte offset {pos} (expected 2 or 3): "
                    "the .rec is corrupt"
                )

    def _chunk_at(self, key: int, offset: int) -> tuple[int, int]:
        """(cflag, length) of the chunk at ``offset``, checked against the magic and the file size."""
        if offset + 8 > self._size:
            raise RecordIOError(
                f"{self.rec_path}: key {key}: byte offset {offset} is past the end of the "
                f"{self._size}-byte file: the .rec is truncated or the .idx is from another file"
            )
        magic, lrec = _CHUNK.unpack_from(self._mm, offset)
        if magic != MAGIC or offset % 4:
            raise RecordIOError(
                f"{self.rec_path}: key {key}: no record starts at byte offset {offset} (found "
                f"0x{magic:08x}, expected the RecordIO magic 0x{MAGIC:08x}): the file is not "
                "RecordIO, is corrupt, or the .idx belongs to another .rec"
            )
        length = lrec & _LEN_MASK
        if offset + 8 + length > self._size:
            raise RecordIOError(
                f"{self.rec_path}: key {key}: record at byte offset {offset} needs "
                f"{8 + length} bytes but the file ends at {self._size}: the .rec is truncated"
            )
        return lrec >> 29, length

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __iter__(self) -> Iterator[bytes]:
        """Every record, in the order of the keys in the ``.idx``."""
        return (self.read(key) for key in self.keys)

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        if self._file is not None:
            self._file.close()
        self._file = self._mm = self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _mm=None, _pid=None, _size=0, _keys=None)
        return state

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _read_idx(idx_path: Path, rec_path: Path) -> RecordIndex:
    """The compact index of ``idx_path`` (``key<TAB>offset`` lines, any key order, blank lines ignored)."""
    try:
        text = idx_path.read_bytes()
    except FileNotFoundError:
        raise RecordIOError(
            f"{idx_path}: index of {rec_path} not found; pass the .idx written with the "
            ".rec (MXIndexedRecordIO/RecordIOWriter write both)"
        ) from None
    try:
        return parse_idx(text, str(idx_path))
    except ValueError as exc:
        raise RecordIOError(str(exc)) from None
