"""Training datasets (DESIGN.md "Dataset layouts") and the two-view wrapper (docs/method.md §2).

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

from qgface.data.folder_index import FolderIndex, build_folder_index, open_folder_index
from qgface.data.images import decode_bgr
from qgface.data.insightface_rec import identity_of, read_insightface_header
from qgface.data.irheader import unpack
from qgface.data.recordio import RecordIOError, RecordIOReader
from qgface.data.views import make_views, num_views

__all__ = [
    "IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "DatasetLayoutError",
    "RecordTrainDataset",
    "FolderTrainDataset",
    "has_folder_layout",
    "open_train_dataset",
    "TwoViewDataset",
]

log = logging.getLogger(__name__)

IMAGE_SIZE = 112
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetLayoutError(ValueError):
    """A training root, record or image does not have the expected layout."""


def _check_image(img: np.ndarray, where: str) -> np.ndarray:
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DatasetLayoutError(
            f"{where}: image is {img.shape[1]}x{img.shape[0]}, expected an aligned "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} face; align/resize the training set first"
        )
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
            raise DatasetLayoutError(
                f"{self.reader.rec_path}: key 0: header label {list(header.label)} "
                "gives no identities (expected [N+1, N+1+num_ids])"
            )
        self.reader.close()  # mapped again lazily, per process
        self.reader.index.share_memory()  # spawned loader workers map the index instead of copying it
        log.info("%s: %d images of %d identities", self.reader.rec_path, self.num_images, self.num_classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        key = self.first_key + index
        header, payload = unpack(self.reader.read(key))
        label = identity_of(header)
        where = f"{self.reader.rec_path}: key {key}"
        if not 0 <= label < self.num_classes:
            raise RecordIOError(
                f"{where}: identity label {label} is outside [0, {self.num_classes}) given by "
                "the header (record 0); the .rec is inconsistent, rebuild it"
            )
        try:
            img = decode_bgr(payload, source_rgb=True)
        except ValueError as exc:
            raise RecordIOError(f"{where}: {exc}") from None
        return _check_image(img, where), label


class FolderTrainDataset(Dataset):
    """Images in ``<root>/<identity>/<image>``; identities sorted by name, label = rank in that order.

    Images are read with ``cv2.imread`` (BGR, files hold ordinary colour). Identity folders
    without image files still take their label, so labels match the sorted folder list. The file
    list is a compact :class:`~qgface.data.folder_index.FolderIndex`: listed here when
    ``index_path`` is None, else mapped from that cached index file (``ensure_folder_index``), in
    which case pickling (to a spawned worker) carries the path, not the list.
    """

    def __init__(self, root: str | os.PathLike, index_path: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.index_path = Path(index_path) if index_path is not None else None
        self._index: FolderIndex | None = self._load_index()
        self.num_classes = self._index.num_classes
        if self._index.num_images == 0:
            raise DatasetLayoutError(
                f"{self.root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in any "
                "<identity>/ subfolder; expected <root>/<identity>/<image>.jpg"
            )
        log.info("%s: %d images of %d identities", self.root, self._index.num_images, self.num_classes)

    def _load_index(self) -> FolderIndex:
        if self.index_path is None:
            return build_folder_index(self.root, IMAGE_EXTENSIONS)
        return open_folder_index(self.index_path)

    @property
    def index(self) -> FolderIndex:
        if self._index is None:  # a mapped index after unpickling: map it again in this process
            self._index = self._load_index()
        return self._index

    @property
    def identities(self) -> list[str]:
        """The identity folder names in label order."""
        return [self.index.identity(label) for label in range(self.num_classes)]

    def __len__(self) -> int:
        return self.index.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        path, label = self.index.path(index), self.index.label(index)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetLayoutError(f"{path}: cannot read this file as an image (missing or corrupt)")
        return _check_image(img, path), label

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.index_path is not None:
            state["_index"] = None
        return state


def has_folder_layout(root: str | os.PathLike) -> bool:
    """True when ``root`` would be read as an image folder: no ``train.rec``, some identity subfolder."""
    root = Path(root)
    return (
        root.is_dir()
        and not (root / "train.rec").is_file()
        and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    )


def open_train_dataset(
    root: str | os.PathLike, folder_index: str | os.PathLike | None = None
) -> RecordTrainDataset | FolderTrainDataset:
    """The training set at ``root``: ``train.rec`` + ``train.idx`` if present, else an image folder
    (listed from the cached index file ``folder_index`` when given)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(
            f"{root}: training data root does not exist or is not a folder; expected "
            "a folder holding train.rec + train.idx or <identity>/<image> subfolders "
            "(set data.root)"
        )
    if (root / "train.rec").is_file():
        if not (root / "train.idx").is_file():
            raise DatasetLayoutError(
                f"{root / 'train.rec'}: has no index {root / 'train.idx'} beside it; "
                "copy the .idx written with the .rec"
            )
        return RecordTrainDataset(root)
    if has_folder_layout(root):
        return FolderTrainDataset(root, folder_index)
    raise DatasetLayoutError(
        f"{root}: neither train.rec + train.idx (InsightFace RecordIO) nor "
        "<identity>/<image> subfolders found; point data.root at one of these layouts"
    )


class TwoViewDataset(Dataset):
    """Network input of a training sample: the views of one source image (docs/method.md §2).

    ``dataset[(index, epoch)]`` (a plain ``index`` means epoch 0) returns ``(views, label)`` with
    ``views`` uint8 ``[V, 3, 112, 112]`` (BGR planes): ``V = 2`` for ``lh`` (view 0 = H, view 1 = L)
    and ``adaface`` (two independent AdaFace views), ``V = 1`` for ``flip``. Batches stay uint8
    through shared memory, pinning and the copy to the GPU (a quarter of float32's bytes); the
    training step normalises them on the device with ``images.to_network_input``.
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
        return torch.from_numpy(_planar(make_views(img, rng, self.views, self.data_cfg))), label


def _planar(views: list[np.ndarray]) -> np.ndarray:
    """The ``HxWx3`` uint8 views stacked as ``[V, 3, H, W]`` uint8."""
    return np.ascontiguousarray(np.stack(views).transpose(0, 3, 1, 2))
