"""A trained backbone as a notebook-friendly face recogniser (docs/method.md §9).

``Recognizer.embed(images)`` takes BGR uint8 arrays, aligned 112x112 crops or raw photos (the
largest face is detected with MTCNN and aligned to the ArcFace template), and returns the
evaluation's flip-fused embedding ``normalize(e*n + e_flip*n_flip)`` with its norm ``||e*n +
e_flip*n_flip||`` (docs/method.md §7): the norm is QGFace's quality estimate, about twice a single
view's feature norm. Batched, float32, on the GPU when there is one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from qgface.data.images import normalize_bgr
from qgface.detect import MTCNN
from qgface.eval.align import align_face
from qgface.eval.embed import fused_embedding
from qgface.models import load_backbone

__all__ = ["ALIGNED_SHAPE", "NoFaceError", "Recognizer", "cosine_similarity"]

log = logging.getLogger(__name__)

ALIGNED_SHAPE = (112, 112, 3)


class NoFaceError(ValueError):
    """No face was found in an image that had to be detected and aligned."""


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two arrays of embeddings (any norms)."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class Recognizer:
    """Embed faces with a backbone returning ``(unit embedding, norm)``, such as :class:`qgface.models.IResNet`.

    ``detect`` in :meth:`embed` / :meth:`align`: ``None`` takes 112x112 images as aligned and detects
    in every other image, ``True`` detects in every image, ``False`` accepts aligned crops only.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str | None = None,
        batch_size: int = 64,
        detector_weights: str | os.PathLike | None = None,
        min_face_size: float = 20.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self._detector_args = (detector_weights, min_face_size)
        self._detector: MTCNN | None = None

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, name: str | None = None, device: torch.device | str | None = None, **kwargs
    ) -> Recognizer:
        """Load the backbone of any checkpoint :func:`qgface.models.load_backbone` reads."""
        return cls(load_backbone(path, name=name), device=device, **kwargs)

    @property
    def detector(self) -> MTCNN:
        """The MTCNN used for raw photos (built on first use; it runs on the CPU)."""
        if self._detector is None:
            weights, min_face_size = self._detector_args
            self._detector = MTCNN(weights, min_face_size=min_face_size)
        return self._detector

    def align(self, image: np.ndarray, detect: bool | None = None) -> np.ndarray | None:
        """The aligned 112x112 crop of ``image`` (its largest face), or None when no face is found."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 BGR image, got {image.dtype} {image.shape}")
        if detect is False or (detect is None and image.shape == ALIGNED_SHAPE):
            if image.shape != ALIGNED_SHAPE:
                raise ValueError(
                    f"image is {image.shape[1]}x{image.shape[0]}, not an aligned 112x112 face: "
                    "detect and align it (detect=True; --detect on the command line)"
                )
            return image
        faces = self.detector.detect(image)
        return align_face(image, faces[0].landmarks) if faces else None

    @torch.no_grad()
    def embed_aligned(self, crops: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings [N, D] float32 unit rows, norms [N])`` of aligned 112x112 BGR crops."""
        crops = np.asarray(crops) if not isinstance(crops, np.ndarray) else crops
        if crops.ndim == 3:
            crops = crops[None]
        if crops.dtype != np.uint8 or crops.shape[1:] != ALIGNED_SHAPE:
            raise ValueError(
                f"expected aligned uint8 BGR crops of shape [N, 112, 112, 3], got {crops.dtype} {crops.shape}"
            )
        embeddings, norms = [], []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(normalize_bgr(crops[start : start + self.batch_size])).to(self.device)
            emb, norm = fused_embedding(self.model, batch)
            embeddings.append(emb.float().cpu().numpy())
            norms.append(norm.float().cpu().numpy().reshape(-1))
        if not embeddings:
            return np.empty((0, 0), np.float32), np.empty(0, np.float32)
        return np.concatenate(embeddings), np.concatenate(norms)

    def embed(
        self, images: np.ndarray | Sequence[np.ndarray], detect: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings, norms)`` of BGR images (one HxWx3 array, or a list/stack of them).

        Raises :class:`NoFaceError` naming the first image in which no face was found.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        crops = []
        for k, image in enumerate(images):
            crop = self.align(image, detect)
            if crop is None:
                raise NoFaceError(f"no face found in image {k} ({image.shape[1]}x{image.shape[0]} pixels)")
            crops.append(crop)
        return self.embed_aligned(np.stack(crops) if crops else np.empty((0, *ALIGNED_SHAPE), np.uint8))
