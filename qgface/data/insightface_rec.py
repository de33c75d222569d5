"""The InsightFace training layout of an indexed RecordIO pair (``train.rec`` + ``train.idx``).

Record 0 is a header with an array label ``[N+1, N+1+num_ids]``; records ``1..N`` are images whose
label is the identity (a scalar, or an array whose first element is the identity); records
``N+1..N+num_ids`` are one per identity with the label ``[first image key, end image key)``.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Iterable

from qgface.data.irheader import IRHeader, pack, unpack
from qgface.data.recordio import RecordIOError, RecordIOReader, RecordIOWriter

__all__ = ["identity_of", "read_insightface_header", "write_insightface_rec"]

log = logging.getLogger(__name__)


def identity_of(header: IRHeader) -> int:
    """The identity of an InsightFace image record: its scalar label or its label array's first element."""
    return int(header.label[0]) if header.flag > 0 else int(header.label)


def read_insightface_header(reader: RecordIOReader) -> tuple[int, int]:
    """``(first, end)``: the image keys of an InsightFace training ``.rec`` are ``range(first, end)``.

    Record 0 must be the header (``flag > 0``, label ``[N+1, N+1+num_ids]``), so this is ``(1, N+1)``.
    """
    if 0 not in reader:
        raise RecordIOError(f"{reader.rec_path}: no record 0, so no InsightFace header")
    header, _ = unpack(reader.read(0))
    if header.flag < 2:
        raise RecordIOError(
            f"{reader.rec_path}: key 0: record 0 has flag {header.flag}, not the "
            "InsightFace header (an array label [N+1, N+1+num_ids])"
        )
    end = int(header.label[0])
    if end < 1 or (end > 1 and (end - 1) not in reader):
        raise RecordIOError(
            f"{reader.rec_path}: key 0: header says images are keys 1..{end - 1}, "
            f"but key {end - 1} is not in {reader.idx_path}"
        )
    return 1, end


def write_insightface_rec(
    rec_path: str | os.PathLike, idx_path: str | os.PathLike, items: Iterable[tuple[bytes, int]]
) -> tuple[int, int]:
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
                raise ValueError(
                    f"{rec_path}: item {key - 1} has identity {label} but identities must be "
                    f"0, 1, 2, ... in non-decreasing order (expected {len(ranges) - 1} or "
                    f"{len(ranges)})"
                )
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
