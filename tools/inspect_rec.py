#!/usr/bin/env python3
"""Summarise an indexed RecordIO pair: record count, InsightFace header, label range, first records.

python tools/inspect_rec.py data/faces_emore/train.rec --show 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from qgface.data.images import decode_bgr
from qgface.data.insightface_rec import identity_of, read_insightface_header
from qgface.data.irheader import IRHeader, unpack
from qgface.data.recordio import RecordIOError, RecordIOReader


def describe(header: IRHeader) -> str:
    label = np.array2string(header.label, separator=", ") if header.flag > 0 else f"{header.label:g}"
    return f"flag={header.flag} label={label} id={header.id} id2={header.id2}"


def image_shape(payload: bytes) -> str:
    try:
        return "x".join(map(str, decode_bgr(payload).shape))
    except ValueError:
        return "not an image"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rec", type=Path, help="the .rec file")
    parser.add_argument("--idx", type=Path, help="its index (default: the .rec path with suffix .idx)")
    parser.add_argument("--show", type=int, default=5, metavar="N", help="list the first N records of the .idx")
    parser.add_argument(
        "--scan",
        type=int,
        default=0,
        metavar="M",
        help="read only the first M image records for the label range (default 0: all)",
    )
    args = parser.parse_args()
    reader = RecordIOReader(args.rec, args.idx or args.rec.with_suffix(".idx"))
    print(f"{args.rec}: {args.rec.stat().st_size:,} bytes, {len(reader):,} records", end="")
    print(f", keys {min(reader.keys)}..{max(reader.keys)}" if len(reader) else "")

    try:
        first, end = read_insightface_header(reader)
        header, _ = unpack(reader.read(0))
        print(f"InsightFace header (key 0): {describe(header)}")
        num_ids = int(header.label[1]) - end
        print(
            f"  images: keys {first}..{end - 1} ({end - first:,}); identity records: keys {end}..{end + num_ids - 1}"
            f" ({num_ids:,})"
        )
        image_keys = range(first, end)
    except RecordIOError as exc:
        print(f"no InsightFace header ({exc}); treating every record as an image")
        image_keys = reader.keys
    scan = image_keys[: args.scan] if args.scan else image_keys
    labels = [identity_of(unpack(reader.read(k))[0]) for k in scan]
    if labels:
        print(f"labels of {len(labels):,} image records: {min(labels)}..{max(labels)}, {len(set(labels)):,} distinct")

    for key in reader.keys[: args.show]:
        record = reader.read(key)
        header, payload = unpack(record)
        shape = image_shape(payload) if payload else "empty"
        print(f"  key {key}: {len(record):,} bytes, {describe(header)}, payload {len(payload):,} bytes ({shape})")


if __name__ == "__main__":
    main()
