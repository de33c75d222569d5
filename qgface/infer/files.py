"""Finding and reading the photos a user points the inference commands at."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from qgface.data.datasets import IMAGE_EXTENSIONS

__all__ = ["list_images", "read_bgr"]


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursively, hidden entries skipped) as sorted paths relative to it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of images")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder, f).relative_to(root)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    return sorted(found)


def read_bgr(path: str | os.PathLike) -> np.ndarray:
    """A uint8 HxWx3 BGR array of the image file ``path`` (grey and alpha images are converted)."""
    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise FileNotFoundError(f"image {path} does not exist")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"image {path} cannot be decoded ({data.size} bytes); expected a JPEG/PNG/BMP/WebP/TIFF file")
    return image
