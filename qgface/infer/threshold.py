"""A same/different threshold for verification, learnt the way the evaluation learns it (docs/method.md §7, §9).

On an InsightFace verification ``.bin`` (e.g. ``lfw.bin``) the HQ protocol picks, on each of 10
folds, the squared-distance threshold with the best accuracy on the other 9. For unit embeddings the
squared distance is ``d = 2 - 2 cos``, so the median of those 10 thresholds gives the cosine
threshold ``1 - d/2``: "same person" when the cosine similarity is above it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from qgface.data.binfile import load_bin
from qgface.data.images import decode_bgr
from qgface.eval.metrics import pair_distances, verification_accuracy_from_distances
from qgface.infer.recognizer import Recognizer

__all__ = ["PairThreshold", "threshold_from_bin"]


@dataclasses.dataclass(frozen=True)
class PairThreshold:
    """A cosine threshold and the 10-fold accuracy (%) it came with."""

    cosine: float
    accuracy: float
    source: str


def threshold_from_bin(recognizer: Recognizer, path: str | os.PathLike, folds: int = 10) -> PairThreshold:
    """Embed the pairs of the verification set ``path`` with ``recognizer`` and learn the threshold."""
    images, issame = load_bin(path)
    crops = np.stack([decode_bgr(payload) for payload in images])
    embeddings, _ = recognizer.embed_aligned(crops)
    accuracies, thresholds = verification_accuracy_from_distances(pair_distances(embeddings), issame, folds)
    return PairThreshold(
        cosine=float(1.0 - np.median(thresholds) / 2.0),
        accuracy=float(accuracies.mean() * 100),
        source=f"{folds}-fold threshold of {Path(path).name}",
    )
