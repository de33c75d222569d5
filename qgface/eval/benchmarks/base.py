"""The protocol object every benchmark implements (docs/method.md §7-8, STYLE.md habit 12).

A benchmark knows its canonical image list (fixed by construction: protocol order or sorted, never
directory-walk order), how to get the bytes of image ``i`` from the original files, the record label
of each image, which (image, variant) items to embed, and how to turn their embeddings into metrics.
The bytes of image ``i`` are exactly what record ``i`` of the compressed ``.rec`` holds (docs/method.md §8),
so evaluating from the ``.rec`` or from the files gives identical numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from qgface.vocab.benchmarks import SCFACE_ALIGNED_DIR, TINYFACE_ALIGNED_DIR

__all__ = ["Benchmark", "BenchmarkError", "BenchmarkOptions", "EvalOutput", "read_file_bytes"]


class BenchmarkError(ValueError):
    """A benchmark's data is missing or does not follow its protocol (message names the file)."""


@dataclasses.dataclass
class EvalOutput:
    """Metrics (percentages, keyed as in results.csv) and curves for plots (lists of floats)."""

    metrics: dict[str, float | None]  # None: not resolvable by this data (e.g. a FAR below 1/impostors)
    curves: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """The choices a benchmark's protocol object is built with (the ``eval.*`` keys of the same names)."""

    tinyface_aligned_dir: str = TINYFACE_ALIGNED_DIR
    scface_aligned_dir: str = SCFACE_ALIGNED_DIR
    ijb_protocol: str = "qgface"


class Benchmark:
    """Base class; subclasses set ``name`` and fill ``image_names`` / ``labels`` in ``__init__``."""

    name: str = ""
    rec_name: str = ""
    """Name of the compressed ``.rec`` it reads; empty = ``name`` (IJB 1:N shares the 1:1 set's images)."""
    protocol: str = ""
    """The named convention its metrics follow where several exist (IJB: qgface | insightface); in the results."""
    params: dict[str, Any] = {}
    """What determines the record bytes besides the list (e.g. alignment, encoding); in the manifest."""

    def __init__(self, data_root: str | Path) -> None:
        self.data_root = Path(data_root)
        self.image_names: list[str] = []
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)

    @classmethod
    def from_options(cls, name: str, data_root: str | Path, options: BenchmarkOptions) -> Benchmark:
        """The protocol object of registry entry ``name``; subclasses that take options override this."""
        return cls(data_root)

    def __len__(self) -> int:
        return len(self.image_names)

    def load_bytes(self, index: int) -> bytes:
        """The encoded bytes of image ``index`` of the canonical list, read from the original files."""
        raise NotImplementedError

    def record_label(self, index: int) -> float | np.ndarray:
        """The label of record ``index`` in the compressed ``.rec``: the record label by default; a float
        array where the record carries more (IJB: the 5 landmarks and the detector score)."""
        return float(self.labels[index])

    def embed_items(self) -> list[tuple[int, Hashable]]:
        """(image index, variant) pairs to embed, in order; by default every image once, unmodified."""
        return [(i, None) for i in range(len(self))]

    def transform(self, variant: Hashable, bgr: np.ndarray) -> np.ndarray:
        """The image to embed for ``variant`` (e.g. a degraded copy); identity by default."""
        return bgr

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        """Metrics and curves from the fused embeddings/norms of :meth:`embed_items`, in that order."""
        raise NotImplementedError

    def sizes(self) -> dict[str, int]:
        """Protocol sizes (pairs, probes, gallery, templates, images) for the results JSON."""
        return {"images": len(self)}

    def _check_features(self, embeddings: np.ndarray, norms: np.ndarray) -> None:
        items = len(self.embed_items())
        if len(embeddings) != items or len(norms) != items:
            raise ValueError(
                f"{self.name}: expected {items} embeddings and norms (one per embed item), "
                f"got {len(embeddings)} and {len(norms)}"
            )


def read_file_bytes(path: Path, benchmark: str) -> bytes:
    """Bytes of one image file, with a clear error naming the benchmark and the file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BenchmarkError(
            f"{benchmark}: image file {path} is listed by the protocol but missing; "
            "check eval.data_root and the aligned-image folder"
        ) from None
