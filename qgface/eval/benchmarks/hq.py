"""HQ verification and cross-resolution LFW (docs/method.md §7).

``hq``: the five InsightFace ``.bin`` sets in the data root, 10-fold accuracy (%) each and their mean
``hq_avg``; the image list is the five files' images in the fixed order of ``HQ_SETS``.

``crlfw``: ``lfw.bin`` with the first image of every pair downscaled to exactly 8/12/16/20 px square
and back to its size, both with Pillow's bilinear ``Image.resize`` (docs/method.md §7.2). That is
what the reference's torchvision ``Resize((s, s))`` does to a PIL image: Pillow's bilinear filter is
antialiased when downscaling (a triangle filter widened to the footprint of each output pixel).
OpenCV has no such filter: ``INTER_AREA`` leaves 36-58 % of the pixels more than one level away.
Keys ``crlfw_<size>`` and their mean ``crlfw_avg`` (the reference's logged aggregate).
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import numpy as np
from PIL import Image

from qgface.data.binfile import BinFileError, load_bin
from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, EvalOutput
from qgface.eval.metrics import verification_accuracy
from qgface.vocab.benchmarks import HQ_SETS

__all__ = ["CRLFW_SIZES", "CrossResolutionLFW", "HQ_SETS", "HQVerification"]

CRLFW_SIZES = (8, 12, 16, 20)


def _load(path: Path, benchmark: str) -> tuple[list[bytes], np.ndarray]:
    if not path.is_file():
        raise BenchmarkError(
            f"{benchmark}: verification set {path} not found; put the InsightFace "
            f"{path.name} into eval.data_root ({path.parent})"
        )
    try:
        return load_bin(path)
    except BinFileError as exc:
        raise BenchmarkError(f"{benchmark}: {exc}") from None


def _fold_stats(embeddings: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    acc, _ = verification_accuracy(embeddings, issame, folds=10)
    return float(acc.mean() * 100), float(acc.std() * 100)


class HQVerification(Benchmark):
    """LFW, CFP-FP, AgeDB-30, CALFW, CPLFW 10-fold accuracy (%), keys ``<set>``, ``<set>_std``, ``hq_avg``."""

    name = "hq"

    def __init__(self, data_root: str | Path, sets: tuple[str, ...] = HQ_SETS) -> None:
        super().__init__(data_root)
        self.sets = tuple(sets)
        self._images: list[bytes] = []
        self.issame: dict[str, np.ndarray] = {}
        self.offsets: dict[str, int] = {}
        for name in self.sets:
            images, issame = _load(self.data_root / f"{name}.bin", self.name)
            self.offsets[name] = len(self._images)
            self._images += images
            self.issame[name] = issame
            self.image_names += [f"{name}.bin:{i}" for i in range(len(images))]
        self.labels = np.arange(len(self.image_names))

    @staticmethod
    def metric_names(sets: tuple[str, ...] = HQ_SETS) -> list[str]:
        """The metric keys :meth:`evaluate` returns for ``sets``, known without loading any data."""
        return [key for name in sets for key in (name, f"{name}_std")] + ["hq_avg"]

    def load_bytes(self, index: int) -> bytes:
        return self._images[index]

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        self._check_features(embeddings, norms)
        metrics = {}
        for name in self.sets:
            start = self.offsets[name]
            part = embeddings[start : start + 2 * len(self.issame[name])]
            metrics[name], metrics[f"{name}_std"] = _fold_stats(part, self.issame[name])
        metrics["hq_avg"] = float(np.mean([metrics[name] for name in self.sets]))
        return EvalOutput(metrics)

    def sizes(self) -> dict[str, int]:
        return {"images": len(self), **{f"{name}_pairs": len(self.issame[name]) for name in self.sets}}


def degrade(bgr: np.ndarray, size: int) -> np.ndarray:
    """Pillow bilinear resize to ``size`` x ``size`` and back to the original size (uint8 HxWx3).

    The resize filters each channel alone, so the channel order (BGR here; the reference hands PIL
    its BGR array as well) does not change the result.
    """
    height, width = bgr.shape[:2]
    image = Image.fromarray(np.ascontiguousarray(bgr))
    small = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


class CrossResolutionLFW(Benchmark):
    """LFW pairs, first image at 8/12/16/20 px: 10-fold accuracy (%), keys ``crlfw_<size>`` (+ ``_std``)
    and ``crlfw_avg``, the mean over the sizes."""

    name = "crlfw"

    def __init__(self, data_root: str | Path, sizes: tuple[int, ...] = CRLFW_SIZES) -> None:
        super().__init__(data_root)
        self.resolutions = tuple(sizes)
        self._images, self.issame = _load(self.data_root / "lfw.bin", self.name)
        self.image_names = [f"lfw.bin:{i}" for i in range(len(self._images))]
        self.labels = np.arange(len(self.image_names))
        pairs = len(self.issame)
        # every second image once, then every first image at each size (size-major)
        self._items: list[tuple[int, Hashable]] = [(2 * p + 1, None) for p in range(pairs)]
        self._items += [(2 * p, size) for size in self.resolutions for p in range(pairs)]

    @staticmethod
    def metric_names(sizes: tuple[int, ...] = CRLFW_SIZES) -> list[str]:
        """The metric keys :meth:`evaluate` returns for ``sizes``, known without loading any data."""
        return [key for size in sizes for key in (f"crlfw_{size}", f"crlfw_{size}_std")] + ["crlfw_avg"]

    def load_bytes(self, index: int) -> bytes:
        return self._images[index]

    def embed_items(self) -> list[tuple[int, Hashable]]:
        return self._items

    def transform(self, variant: Hashable, bgr: np.ndarray) -> np.ndarray:
        return bgr if variant is None else degrade(bgr, int(variant))

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        self._check_features(embeddings, norms)
        pairs = len(self.issame)
        second = embeddings[:pairs]
        metrics = {}
        for k, size in enumerate(self.resolutions):
            first = embeddings[pairs * (k + 1) : pairs * (k + 2)]
            pair_emb = np.empty((2 * pairs, embeddings.shape[1]), dtype=embeddings.dtype)
            pair_emb[0::2], pair_emb[1::2] = first, second
            metrics[f"crlfw_{size}"], metrics[f"crlfw_{size}_std"] = _fold_stats(pair_emb, self.issame)
        metrics["crlfw_avg"] = float(np.mean([metrics[f"crlfw_{size}"] for size in self.resolutions]))
        return EvalOutput(metrics)

    def sizes(self) -> dict[str, int]:
        return {"images": len(self), "pairs": len(self.issame)}
