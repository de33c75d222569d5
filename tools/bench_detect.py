#!/usr/bin/env python3
"""Detector speed on CPU: MTCNN images/s on the test photos (or a folder), single process.

python tools/bench_detect.py                  # tests/data/photos, 3 rounds
python tools/bench_detect.py /data/raw --rounds 1 --threads 4
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from qgface.detect import MTCNN
from qgface.infer.files import list_images, read_bgr

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(PHOTOS), help="images to detect in (default: the test photos)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the folder (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--min-face-size", type=float, default=20.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [read_bgr(Path(args.folder) / rel) for rel in list_images(args.folder)]
    detector = MTCNN(min_face_size=args.min_face_size)
    detector.detect(images[0])  # warm-up
    started, faces = time.perf_counter(), 0
    for _ in range(args.rounds):
        for image in images:
            faces += len(detector.detect(image))
    elapsed = time.perf_counter() - started
    n = args.rounds * len(images)
    pixels = sum(i.shape[0] * i.shape[1] for i in images) / len(images)
    print(
        f"{n} images (mean {pixels / 1e6:.2f} MPixel), {faces} faces, {elapsed:.2f} s: {n / elapsed:.2f} images/s "
        f"on {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
