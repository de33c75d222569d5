"""SCface 1:N identification (docs/method.md §7): rank-1 (%) per distance over visible cameras 1..5.

``<data_root>/scface/all.txt`` names the images; the aligned 112x112 images are in
``<data_root>/<eval.scface_aligned_dir>/``. Two line formats are read (docs/method.md §7.4):
- the distributed one: tab-separated, the image name WITHOUT extension (``001_cam1_1``) then landmark
  columns (ignored here: the images are already aligned); ``.jpg`` is appended, as the reference does;
- one file name per line (``001_cam1_1.jpg``), as earlier qgface versions wrote it.
Probes ``NNN_camK_D`` with K in 1..5 and D in 1..3; gallery = the frontal mugshots ``NNN_frontal``.
Every other entry (infrared cameras 6..8, other shots the file may list) is not part of the protocol
and is skipped (counted in the log), not an error. Canonical list: the protocol's images sorted by
name; record label = subject number NNN.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, BenchmarkOptions, EvalOutput, read_file_bytes
from qgface.eval.metrics import cmc
from qgface.vocab.benchmarks import SCFACE_ALIGNED_DIR

__all__ = ["DISTANCES", "SCface", "VISIBLE_CAMERAS", "read_listing"]

log = logging.getLogger(__name__)

DISTANCES = (1, 2, 3)
VISIBLE_CAMERAS = (1, 2, 3, 4, 5)
_PROBE = re.compile(r"^(\d+)_cam(\d+)_([123])\.\w+$", re.IGNORECASE)
_MUGSHOT = re.compile(r"^(\d+)_frontal\.\w+$", re.IGNORECASE)


class SCface(Benchmark):
    """Keys ``scface_d1``, ``scface_d2``, ``scface_d3`` (d1 = farthest = lowest resolution)."""

    name = "scface"

    @classmethod
    def from_options(cls, name: str, data_root: str | Path, options: BenchmarkOptions) -> SCface:
        return cls(data_root, options.scface_aligned_dir)

    def __init__(self, data_root: str | Path, aligned_dir: str = SCFACE_ALIGNED_DIR) -> None:
        super().__init__(data_root)
        listing = self.data_root / "scface" / "all.txt"
        self.aligned = self.data_root / aligned_dir
        if not listing.is_file():
            raise BenchmarkError(f"{self.name}: protocol list {listing} not found; check eval.data_root")
        entries = read_listing(listing)
        names, labels, distance = [], [], []
        skipped = 0
        for entry in entries:
            base = Path(entry).name
            if (m := _PROBE.match(base)) is not None and int(m.group(2)) in VISIBLE_CAMERAS:
                labels.append(int(m.group(1)))
                distance.append(int(m.group(3)))
            elif (m := _MUGSHOT.match(base)) is not None:
                labels.append(int(m.group(1)))
                distance.append(0)
            else:  # infrared cameras and anything else the file lists are not in the protocol
                skipped += 1
                continue
            names.append(entry)
        if skipped:
            log.info(
                "%s: %s: %d entries outside the protocol (infrared cameras 6-8, other shots) skipped",
                self.name,
                listing,
                skipped,
            )
        self.image_names = names
        self.labels = np.array(labels, dtype=np.int64)
        self.distance = np.array(distance, dtype=np.int64)  # 0 = gallery mugshot
        for d in DISTANCES:
            if not np.any(self.distance == d):
                raise BenchmarkError(f"{self.name}: {listing} lists no visible-camera probe at distance {d}")
        if not np.any(self.distance == 0):
            raise BenchmarkError(f"{self.name}: {listing} lists no NNN_frontal mugshot (the gallery)")

    def load_bytes(self, index: int) -> bytes:
        return read_file_bytes(self.aligned / self.image_names[index], self.name)

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        self._check_features(embeddings, norms)
        gallery = self.distance == 0
        ranks = tuple(range(1, min(20, int(gallery.sum())) + 1))
        metrics, curves = {}, {}
        for d in DISTANCES:
            probe = self.distance == d
            curve = cmc(embeddings[probe], embeddings[gallery], self.labels[probe], self.labels[gallery], ranks) * 100
            metrics[f"scface_d{d}"] = float(curve[0])
            curves[f"cmc_d{d}"] = {"rank": list(ranks), "identification_rate": curve.tolist()}
        return EvalOutput(metrics, curves)

    def sizes(self) -> dict[str, int]:
        sizes = {"images": len(self), "gallery": int(np.sum(self.distance == 0))}
        sizes.update({f"probes_d{d}": int(np.sum(self.distance == d)) for d in DISTANCES})
        return sizes


def read_listing(path: Path) -> list[str]:
    """The sorted, distinct image file names of an SCface ``all.txt`` in either line format."""
    names = set()
    for line in path.read_text().splitlines():
        first = line.split("\t")[0].strip()
        if not first:
            continue
        if "\t" in line or not Path(first).suffix:  # the distributed format: name without extension
            first += ".jpg"
        names.add(first)
    return sorted(names)
