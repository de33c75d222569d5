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

Record payloads written by InsightFace/MXNet start with an ``IRHeader`` (:func:`pack`).
InsightFace training layout: record 0 is a header with an array label ``[N+1, N+1+num_ids]``;
records ``1..N`` are images whose label is the identity (a scalar, or an array whose first
element is the identity); records ``N+1..N+num_ids`` are one per identity with the label
``[first image key, end image key)``. See :func:`read_insightface_header` and
:func:`write_insightface_rec`.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import numbers
import operator
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from qgface.atomic import atomic_open
from qgface.data.binfile import load_bin, save_bin
from qgface.data.record_index import RecordIndex, parse_idx

__all__ = [
    "IRHeader", "RecordIOError", "RecordIOReader", "RecordIOWriter", "identity_of", "load_bin",
    "pack", "read_insightface_header", "save_bin", "unpack", "write_insightface_rec",
]

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK = struct.Struct("<II")  # magic, lrec
_IR = struct.Struct("<IfQQ")  # MXNet's IRHeader: flag, label, id, id2 (24 bytes)
_LEN_MASK = (1 << 29) - 1
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class RecordIOError(Exception):
    """A ``.rec``/``.idx`` pair is missing, malformed or inconsistent (message names file/key/offset)."""


class IRHeader(NamedTuple):
    """MXNet's image-record header; ``flag > 0`` means ``label`` is a float32 array of that length."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """``mx.recordio.pack``: 24-byte header, then the float32 label array if any, then ``payload``."""
    flag, label, id_, id2 = header
    if isinstance(label, numbers.Number):
        return _IR.pack(0, float(label), id_, id2) + bytes(payload)
    values = np.asarray(label, dtype=np.float32)
    return _IR.pack(values.size, 0.0, id_, id2) + values.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """``mx.recordio.unpack``: the header (label a float32 array when ``flag > 0``) and the payload."""
    if len(record) < _IR.size:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than the {_IR.size}-byte IRHeader")
    flag, label, id_, id2 = _IR.unpack_from(record)
    start = _IR.size
    if flag > 0:
        end = start + 4 * flag
        if len(record) < end:
            raise RecordIOError(f"IRHeader says {flag} float32 labels but the record has {len(record)} bytes")
        label = np.frombuffer(record, np.float32, flag, start).copy()
        start = end
    return IRHeader(flag, label, id_, id2), bytes(record[start:])


def identity_of(header: IRHeader) -> int:
    """The identity of an InsightFace image record: its scalar label or its label array's first element."""
    return int(header.label[0]) if header.flag > 0 else int(header.label)


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
            raise RecordIOError(f"{self.rec_path}: duplicate key {key} (first written at byte offset "
                                f"{self._offsets[key]}); every key of a .rec must be unique")
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
            raise RecordIOError(f"{self.rec_path}: unknown key {key!r} (the .idx {self.idx_path} has "
                                f"{len(self.index)} keys)")
        cflag, length = self._chunk_at(key, offset)
        if cflag == 0:
            return self._mm[offset + 8:offset + 8 + length]
        if cflag != 1:
            raise RecordIOError(f"{self.rec_path}: key {key}: byte offset {offset} holds the middle or "
                                f"end (cflag {cflag}) of a split record, not a record start; the .idx "
                                f"{self.idx_path} does not belong to this .rec")
        parts, pos = [], offset
        while True:
            parts.append(self._mm[pos + 8:pos + 8 + length])
            pos += 8 + ((length + 3) & ~3)
            if cflag == 3:
                return b"".join(parts)
            parts.append(_MAGIC_BYTES)
            cflag, length = self._chunk_at(key, pos)
            if cflag not in (2, 3):
                raise RecordIOError(f"{self.rec_path}: key {key}: split record starting at byte offset "
                                    f"{offset} has chunk flag {cflag} at byte offset {pos} (expected 2 or 3): "
                                    "the .rec is corrupt")

    def _chunk_at(self, key: int, offset: int) -> tuple[int, int]:
        """(cflag, length) of the chunk at ``offset``, checked against the magic and the file size."""
        if offset + 8 > self._size:
            raise RecordIOError(f"{self.rec_path}: key {key}: byte offset {offset} is past the end of the "
                                f"{self._size}-byte file: the .rec is truncated or the .idx is from another file")
        magic, lrec = _CHUNK.unpack_from(self._mm, offset)
        if magic != MAGIC or offset % 4:
            raise RecordIOError(f"{self.rec_path}: key {key}: no record starts at byte offset {offset} (found "
                                f"0x{magic:08x}, expected the RecordIO magic 0x{MAGIC:08x}): the file is not "
                                "RecordIO, is corrupt, or the .idx belongs to another .rec")
        length = lrec & _LEN_MASK
        if offset + 8 + length > self._size:
            raise RecordIOError(f"{self.rec_path}: key {key}: record at byte offset {offset} needs "
                                f"{8 + length} bytes but the file ends at {self._size}: the .rec is truncated")
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
        raise RecordIOError(f"{idx_path}: index of {rec_path} not found; pass the .idx written with the "
                            ".rec (MXIndexedRecordIO/RecordIOWriter write both)") from None
    try:
        return parse_idx(text, str(idx_path))
    except ValueError as exc:
        raise RecordIOError(str(exc)) from None


def read_insightface_header(reader: RecordIOReader) -> tuple[int, int]:
    """``(first, end)``: the image keys of an InsightFace training ``.rec`` are ``range(first, end)``.

    Record 0 must be the header (``flag > 0``, label ``[N+1, N+1+num_ids]``), so this is ``(1, N+1)``.
    """
    if 0 not in reader:
        raise RecordIOError(f"{reader.rec_path}: no record 0, so no InsightFace header")
    header, _ = unpack(reader.read(0))
    if header.flag < 2:
        raise RecordIOError(f"{reader.rec_path}: key 0: record 0 has flag {header.flag}, not the "
                            "InsightFace header (an array label [N+1, N+1+num_ids])")
    end = int(header.label[0])
    if end < 1 or (end > 1 and (end - 1) not in reader):
        raise RecordIOError(f"{reader.rec_path}: key 0: header says images are keys 1..{end - 1}, "
                            f"but key {end - 1} is not in {reader.idx_path}")
    return 1, end


def write_insightface_rec(rec_path: str | os.PathLike, idx_path: str | os.PathLike,
                          items: Iterable[tuple[bytes, int]]) -> tuple[int, int]:
    """Write a complete InsightFace-layout training set; returns ``(num_images, num_ids)``.

    ``items`` yields ``(jpeg bytes, identity)`` with identities ``0, 1, 2, ...`` in non-decreasing
    order. It is consumed once (streamed), so record 0, whose label needs the final counts, is
    written after the images; readers find records by key, not by file position.
    """
    ranges: list[tuple[int, int]] = []  # [first, end) image keys of identity len(ranges)-1
    with RecordIOWriter(rec_path, idx_path) as writer:
        key = 1
        for payload, label in items:
            label = operator.index(label)
            if label == len(ranges):
                ranges.append((key, key))
            elif label != len(ranges) - 1:
                raise ValueError(f"{rec_path}: item {key - 1} has identity {label} but identities must be "
                                 f"0, 1, 2, ... in non-decreasing order (expected {len(ranges) - 1} or "
                                 f"{len(ranges)})")
            writer.write(key, pack(IRHeader(0, float(label), key, 0), payload))
            ranges[-1] = (ranges[-1][0], key + 1)
            key += 1
        if key == 1:
            raise ValueError(f"{rec_path}: no images given")
        first_id_key = key
        writer.write(0, pack(IRHeader(0, [first_id_key, first_id_key + len(ranges)], 0, 0), b""))
        for label, (first, end) in enumerate(ranges):
            writer.write(first_id_key + label, pack(IRHeader(0, [first, end], first_id_key + label, 0), b""))
    log.info("wrote %s: %d images of %d identities", rec_path, key - 1, len(ranges))
    return key - 1, len(ranges)
