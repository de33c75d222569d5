"""Detect and align every photo of a folder tree into 112x112 ArcFace crops (docs/method.md §9).

Each image under ``src`` gives one crop per kept face under ``dst`` at the same relative path (the
largest face; with ``all_faces`` the others follow as ``<stem>_<k><ext>``, k = 1, 2, ... in order of
decreasing size), and one row per face in ``dst/landmarks.csv``. Images without a face, or that
cannot be decoded, get one row with an empty score and their ``status``: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from qgface.atomic import atomic_write_bytes, atomic_write_text
from qgface.detect import MTCNN, Face
from qgface.eval.align import ARCFACE_TEMPLATE, align_face
from qgface.infer.files import list_images, read_bgr

__all__ = ["CSV_COLUMNS", "AlignOptions", "AlignSummary", "align_folder", "align_image", "make_detector"]

log = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "face", "score", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5", "crop", "status")
"""landmarks.csv: source path (relative), face number, detector score, the five landmarks in source
pixels (ArcFace template order), the crop's path under dst, and one of the ``STATUS_*`` values."""

STATUS_ALIGNED, STATUS_PASSED, STATUS_NO_FACE, STATUS_UNREADABLE = "aligned", "passed_through", "no_face", "unreadable"


@dataclasses.dataclass(frozen=True)
class AlignOptions:
    """How :func:`align_folder` treats each image."""

    all_faces: bool = False
    """keep every face found, not only the largest"""
    min_face_size: float = 20.0
    """smallest face kept, in source pixels (the longer side of its box)"""
    upsample: float = 1.0
    """enlarge each image by this factor before detection; faces down to 12/upsample source pixels are found"""
    pass_aligned: bool = False
    """copy images that already have the crop size unchanged instead of detecting in them"""
    size: int = 112
    """side of the aligned crop (pixels)"""
    weights_dir: str | None = None
    """folder with MTCNN's pnet.pt/rnet.pt/onet.pt; None = the installed facenet-pytorch wheel"""

    def __post_init__(self) -> None:
        if self.upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {self.upsample}")
        if self.min_face_size * self.upsample < 12:
            raise ValueError(
                f"min_face_size {self.min_face_size} px is below MTCNN's 12 px window at upsample "
                f"{self.upsample}: raise upsample to at least {12 / self.min_face_size:.2f}"
            )
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")


@dataclasses.dataclass
class AlignSummary:
    """Counts of one :func:`align_folder` run."""

    images: int = 0
    faces: int = 0
    no_face: int = 0
    passed_through: int = 0
    unreadable: int = 0
    csv_path: Path | None = None

    def __str__(self) -> str:
        return (
            f"{self.images} images: {self.faces} faces aligned, {self.passed_through} passed through, "
            f"{self.no_face} without a face, {self.unreadable} unreadable -> {self.csv_path}"
        )


def make_detector(options: AlignOptions, device: str = "cpu") -> MTCNN:
    """The MTCNN that searches down to ``options.min_face_size`` source pixels."""
    return MTCNN(options.weights_dir, min_face_size=options.min_face_size * options.upsample, device=device)


def _row(
    rel: Path,
    status: str,
    face: int | str = "",
    score: float | str = "",
    landmarks: np.ndarray | None = None,
    crop: str = "",
) -> dict[str, object]:
    row: dict[str, object] = {"path": rel.as_posix(), "face": face, "score": score, "crop": crop, "status": status}
    for k in range(5):
        x, y = ("", "") if landmarks is None else (f"{landmarks[k, 0]:.2f}", f"{landmarks[k, 1]:.2f}")
        row[f"x{k + 1}"], row[f"y{k + 1}"] = x, y
    return row


def _crop_path(rel: Path, face: int) -> Path:
    return rel if face == 0 else rel.with_name(f"{rel.stem}_{face}{rel.suffix}")


def _encode(image: np.ndarray, suffix: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, image, params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {suffix} image")
    return buf.tobytes()


def align_image(detector: MTCNN, src: Path, dst: Path, rel: Path, options: AlignOptions) -> list[dict[str, object]]:
    """Align the image ``src/rel`` into ``dst`` and return its landmarks.csv rows."""
    try:
        image = read_bgr(src / rel)
    except ValueError as exc:
        log.warning("%s", exc)
        return [_row(rel, STATUS_UNREADABLE)]
    if options.pass_aligned and image.shape[:2] == (options.size, options.size):
        atomic_write_bytes(dst / rel, (src / rel).read_bytes())
        template = ARCFACE_TEMPLATE * (options.size / 112.0)
        return [_row(rel, STATUS_PASSED, face=0, landmarks=template, crop=rel.as_posix())]
    faces: list[Face] = [
        f for f in detector.detect(image, upsample=options.upsample) if f.size >= options.min_face_size
    ]
    if not faces:
        return [_row(rel, STATUS_NO_FACE)]
    rows = []
    for k, face in enumerate(faces if options.all_faces else faces[:1]):
        crop = _crop_path(rel, k)
        atomic_write_bytes(dst / crop, _encode(align_face(image, face.landmarks, options.size), rel.suffix))
        rows.append(
            _row(rel, STATUS_ALIGNED, face=k, score=f"{face.score:.4f}", landmarks=face.landmarks, crop=crop.as_posix())
        )
    return rows


_worker_state: dict[str, object] = {}


def _worker_init(src: Path, dst: Path, options: AlignOptions) -> None:
    cv2.setNumThreads(1)  # the workers run in parallel: one thread each
    torch.set_num_threads(1)
    _worker_state.update(detector=make_detector(options), src=src, dst=dst, options=options)


def _worker_align(rel: Path) -> list[dict[str, object]]:
    s = _worker_state
    return align_image(s["detector"], s["src"], s["dst"], rel, s["options"])  # type: ignore[arg-type]


def align_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: AlignOptions = AlignOptions(),
    *,
    workers: int = 1,
    progress: bool = True,
) -> AlignSummary:
    """Align every image under ``src`` into ``dst`` and write ``dst/landmarks.csv``; returns the counts."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ValueError(f"the output folder {dst} must not lie inside the source folder {src}")
    images = list_images(src)
    if not images:
        raise FileNotFoundError(f"{src} holds no image files")
    dst.mkdir(parents=True, exist_ok=True)
    bar = dict(total=len(images), desc="align", unit="img", disable=not progress, mininterval=2)
    if workers <= 1:
        detector = make_detector(options)
        per_image = [align_image(detector, src, dst, rel, options) for rel in tqdm(images, **bar)]
    else:
        ctx = multiprocessing.get_context("spawn")  # see qgface/data/workers.py: no fork after OpenCV ran
        with ctx.Pool(workers, initializer=_worker_init, initargs=(src, dst, options)) as pool:
            per_image = list(tqdm(pool.imap(_worker_align, images, chunksize=2), **bar))
    summary = AlignSummary(images=len(images), csv_path=dst / "landmarks.csv")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rows in per_image:
        writer.writerows(rows)
        status = rows[0]["status"]
        summary.faces += len(rows) if status == STATUS_ALIGNED else 0
        summary.passed_through += status == STATUS_PASSED
        summary.no_face += status == STATUS_NO_FACE
        summary.unreadable += status == STATUS_UNREADABLE
    atomic_write_text(summary.csv_path, text.getvalue())
    log.info("%s", summary)
    return summary
