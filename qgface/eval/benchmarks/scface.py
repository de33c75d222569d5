"""SCface 1:N identification (METHOD.md §7): rank-1 (%) per distance over visible cameras 1..5.

``<data_root>/scface/all.txt`` names every image of the protocol (one file name per line); the aligned
112x112 images are in ``<data_root>/<eval.scface_aligned_dir>/``. Probes ``NNN_camK_D.<ext>`` with
K in 1..5 (6..8 are infrared and excluded); gallery = the frontal mugshots ``NNN_frontal.<ext>``.
Canonical list: the protocol's images sorted by name; record label = subject number NNN.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, EvalOutput, read_file_bytes
from qgface.eval.metrics import cmc

__all__ = ["DISTANCES", "SCface", "VISIBLE_CAMERAS"]

DISTANCES = (1, 2, 3)
VISIBLE_CAMERAS = (1, 2, 3, 4, 5)
_PROBE = re.compile(r"^(\d+)_cam(\d+)_(\d+)\.\w+$", re.IGNORECASE)
_MUGSHOT = re.compile(r"^(\d+)_frontal\.\w+$", re.IGNORECASE)


class SCface(Benchmark):
    """Keys ``scface_d1``, ``scface_d2``, ``scface_d3`` (d1 = farthest = lowest resolution)."""

    name = "scface"

    def __init__(self, data_root: str | Path, aligned_dir: str = "scface/aligned") -> None:
        super().__init__(data_root)
        listing = self.data_root / "scface" / "all.txt"
        self.aligned = self.data_root / aligned_dir
        if not listing.is_file():
            raise BenchmarkError(f"{self.name}: protocol list {listing} not found; check eval.data_root")
        entries = sorted({line.strip() for line in listing.read_text().splitlines() if line.strip()})
        names, labels, distance = [], [], []
        for entry in entries:
            base = Path(entry).name
            if (m := _PROBE.match(base)) is not None:
                if int(m.group(2)) not in VISIBLE_CAMERAS:
                    continue
                labels.append(int(m.group(1)))
                distance.append(int(m.group(3)))
            elif (m := _MUGSHOT.match(base)) is not None:
                labels.append(int(m.group(1)))
                distance.append(0)
            else:
                raise BenchmarkError(f"{self.name}: {listing}: {entry!r} is neither a probe NNN_camK_D.jpg "
                                     "nor a mugshot NNN_frontal.jpg")
            names.append(entry)
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
