"""Training datasets (DESIGN.md "Dataset layouts") and the two-view wrapper (METHOD.md §2).

A base dataset maps an index to ``(uint8 112x112x3 BGR image, identity label)``:
:class:`RecordTrainDataset` reads an InsightFace ``train.rec/.idx``, :class:`FolderTrainDataset`
an ``<root>/<identity>/<image>`` tree; :func:`open_train_dataset` picks the one on disk.
:class:`TwoViewDataset` turns each source image into the network input of one sample.
"""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from qgface.data.images import decode_bgr
from qgface.data.recordio import RecordIOError, RecordIOReader, read_insightface_header, unpack
from qgface.data.views import make_views, num_views

__all__ = ["IMAGE_SIZE", "IMAGE_EXTENSIONS", "DatasetLayoutError", "RecordTrainDataset", "FolderTrainDataset",
           "open_train_dataset", "TwoViewDataset"]

log = logging.getLogger(__name__)

IMAGE_SIZE = 112
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetLayoutError(ValueError):
    """A training root, record or image does not have the expected layout."""


def _check_image(img: np.ndarray, where: str) -> np.ndarray:
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DatasetLayoutError(f"{where}: image is {img.shape[1]}x{img.shape[0]}, expected an aligned "
                                 f"{IMAGE_SIZE}x{IMAGE_SIZE} face; align/resize the training set first")
    return img


class RecordTrainDataset(Dataset):
    """The images of an InsightFace training ``<root>/train.rec`` + ``train.idx`` (``name`` = ``train``).

    Record 0 is the header (``label = [N+1, N+1+num_ids]``); records ``1..N`` are RGB JPEGs whose
    header label is the identity. Items are ``(BGR uint8 image, label)``; ``num_classes`` = ``num_ids``.
    """

    def __init__(self, root: str | os.PathLike, name: str = "train") -> None:
        self.root = Path(root)
        self.reader = RecordIOReader(self.root / f"{name}.rec", self.root / f"{name}.idx")
        first, end = read_insightface_header(self.reader)
        self.first_key, self.num_images = first, end - first
        header, _ = unpack(self.reader.read(0))
        self.num_classes = int(header.label[1]) - int(header.label[0])
        if self.num_classes < 1:
            raise DatasetLayoutError(f"{self.reader.rec_path}: key 0: header label {list(header.label)} "
                                     "gives no identities (expected [N+1, N+1+num_ids])")
        self.reader.close()  # mapped again lazily, per process
        log.info("%s: %d images of %d identities", self.reader.rec_path, self.num_images, self.num_classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        key = self.first_key + index
        header, payload = unpack(self.reader.read(key))
        label = int(header.label if isinstance(header.label, numbers.Number) else header.label[0])
        where = f"{self.reader.rec_path}: key {key}"
        if not 0 <= label < self.num_classes:
            raise RecordIOError(f"{where}: identity label {label} is outside [0, {self.num_classes}) given by "
                                "the header (record 0); the .rec is inconsistent, rebuild it")
        try:
            img = decode_bgr(payload, source_rgb=True)
        except ValueError as exc:
            raise RecordIOError(f"{where}: {exc}") from None
        return _check_image(img, where), label


class FolderTrainDataset(Dataset):
    """Images in ``<root>/<identity>/<image>``; identities sorted by name, label = rank in that order.

    Images are read with ``cv2.imread`` (BGR, files hold ordinary colour). Identity folders
    without image files still take their label, so labels match the sorted folder list.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        identities = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.identities = identities
        self.num_classes = len(identities)
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(identities):
            files = sorted(f for f in os.listdir(self.root / name) if f.lower().endswith(IMAGE_EXTENSIONS))
            self.samples.extend((str(self.root / name / f), label) for f in files)
        if not self.samples:
            raise DatasetLayoutError(f"{self.root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in any "
                                     "<identity>/ subfolder; expected <root>/<identity>/<image>.jpg")
        log.info("%s: %d images of %d identities", self.root, len(self.samples), self.num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetLayoutError(f"{path}: cannot read this file as an image (missing or corrupt)")
        return _check_image(img, path), label


def open_train_dataset(root: str | os.PathLike) -> RecordTrainDataset | FolderTrainDataset:
    """The training set at ``root``: ``train.rec`` + ``train.idx`` if present, else an image folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: training data root does not exist or is not a folder; expected "
                                 "a folder holding train.rec + train.idx or <identity>/<image> subfolders "
                                 "(set data.root)")
    if (root / "train.rec").is_file():
        if not (root / "train.idx").is_file():
            raise DatasetLayoutError(f"{root / 'train.rec'}: has no index {root / 'train.idx'} beside it; "
                                     "copy the .idx written with the .rec")
        return RecordTrainDataset(root)
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return FolderTrainDataset(root)
    raise DatasetLayoutError(f"{root}: neither train.rec + train.idx (InsightFace RecordIO) nor "
                             "<identity>/<image> subfolders found; point data.root at one of these layouts")


class TwoViewDataset(Dataset):
    """Network input of a training sample: the views of one source image (METHOD.md §2).

    ``dataset[(index, epoch)]`` (a plain ``index`` means epoch 0) returns ``(views, label)`` with
    ``views`` float32 ``[V, 3, 112, 112]`` normalised as ``images.normalize_bgr``: ``V = 2`` for ``lh``
    (view 0 = H, view 1 = L) and ``adaface`` (two independent AdaFace views), ``V = 1`` for ``flip``.
    The randomness comes from ``np.random.default_rng([seed, epoch, index])`` alone, so a sample
    is the same whatever the worker count, worker assignment, or resume point.
    """

    def __init__(self, base: Dataset, views: str, data_cfg: Any, seed: int) -> None:
        self.base = base
        self.views = views
        self.num_views = num_views(views)
        self.data_cfg = data_cfg
        self.seed = int(seed)
        self.num_classes = getattr(base, "num_classes", None)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = (item, 0) if isinstance(item, numbers.Integral) else item
        img, label = self.base[index]
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        return torch.from_numpy(_normalize_views(make_views(img, rng, self.views, self.data_cfg))), label


def _normalize_views(views: list[np.ndarray]) -> np.ndarray:
    """``normalize_bgr`` of the stacked views, written plane by plane (half its time, same values)."""
    out = np.empty((len(views), 3, *views[0].shape[:2]), np.float32)
    for i, view in enumerate(views):
        for c in range(3):
            out[i, c] = view[:, :, c]
    out *= np.float32(2.0 / 255.0)
    out -= np.float32(1.0)
    return out
