"""MXNet's image-record header (``mx.recordio.IRHeader``), byte-compatible with ``mx.recordio.pack/unpack``.

A record payload is the 24-byte header ``flag:uint32 | label:float32 | id:uint64 | id2:uint64``, then
``flag`` float32 labels when ``flag > 0`` (the label is then that array), then the data (e.g. a JPEG).
"""

from __future__ import annotations

import numbers
import struct
from typing import NamedTuple

import numpy as np

from qgface.data.recordio import RecordIOError

__all__ = ["IRHeader", "pack", "unpack"]

_IR = struct.Struct("<IfQQ")  # flag, label, id, id2 (24 bytes)


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
