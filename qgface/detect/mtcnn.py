"""The MTCNN cascade: image pyramid -> P-Net -> R-Net -> O-Net, with NMS and box calibration
(docs/method.md §9).

Box and landmark arithmetic follows the published MTCNN code, which counts pixels from 1 (it was
written in MATLAB): a box ``(x1, y1, x2, y2)`` spans pixels ``trunc(x1)-1 .. trunc(x2)-1`` in 0-based
indexing, and O-Net's landmarks are placed at ``x1 - 1 + fraction * width``, so they come out as
ordinary 0-based pixel coordinates. Windows reaching past the image border are zero-padded (as in
the original, so their geometry stays right), and all resizing uses OpenCV's area interpolation.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from qgface.detect.nets import ONet, PNet, RNet, find_mtcnn_weights, load_mtcnn_net

__all__ = ["MTCNN", "Face", "nms"]

_PNET_STRIDE, _PNET_CELL = 2, 12  # P-Net scores a 12x12 window every 2 pixels of its input


@dataclasses.dataclass(frozen=True)
class Face:
    """One detection in source-image pixels: ``box`` (x1, y1, x2, y2), O-Net ``score`` and
    ``landmarks`` (5x2 x/y) in ArcFace template order: the eye on the image's left, the other eye,
    the nose tip, the mouth corner on the image's left, the other one."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def size(self) -> float:
        """The longer side of the box (pixels)."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first.

    Overlap is intersection over union (``mode="union"``) or over the smaller box (``"min"``); areas
    count pixels inclusively, ``(x2 - x1 + 1) * (y2 - y1 + 1)``, as MTCNN does.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', not {mode!r}")
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        inter = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1) * np.maximum(
            0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1
        )
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = the longer side)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + 0.5 * (w - side)
    out[:, 1] = boxes[:, 1] + 0.5 * (h - side)
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def _calibrate(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Move each edge by its regressed offset, a fraction of the box's width/height."""
    extra = 1.0 if inclusive else 0.0
    w = (boxes[:, 2] - boxes[:, 0] + extra)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + extra)[:, None]
    return boxes[:, :4] + offsets * np.concatenate([w, h, w, h], axis=1)


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 (or NxHxWx3) float RGB -> channels-first, scaled as the networks were trained."""
    return np.ascontiguousarray(np.moveaxis((rgb - 127.5) * 0.0078125, -1, -3), dtype=np.float32)


class MTCNN:
    """Face detector returning boxes, scores and five landmarks (:class:`Face`), largest face first.

    ``min_face_size`` (pixels) sets the smallest face searched for; ``thresholds`` are the three
    stages' face-probability cut-offs and ``factor`` the pyramid's scale step (the published values
    by default). ``weights_dir`` names the folder with ``pnet.pt/rnet.pt/onet.pt``; by default the
    installed facenet-pytorch wheel's data folder.
    """

    def __init__(
        self,
        weights_dir: str | os.PathLike | None = None,
        *,
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: torch.device | str = "cpu",
    ) -> None:
        if min_face_size < 12:
            raise ValueError(
                f"min_face_size must be at least 12 pixels (P-Net's window), got {min_face_size}; "
                "use upsample to find smaller faces"
            )
        if not 0 < factor < 1:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        folder: Path = find_mtcnn_weights(weights_dir)
        self.device = torch.device(device)
        self.pnet = load_mtcnn_net(PNet(), folder / "pnet.pt").to(self.device)
        self.rnet = load_mtcnn_net(RNet(), folder / "rnet.pt").to(self.device)
        self.onet = load_mtcnn_net(ONet(), folder / "onet.pt").to(self.device)
        self.min_face_size, self.thresholds, self.factor = float(min_face_size), tuple(thresholds), float(factor)

    @torch.no_grad()
    def detect(self, bgr: np.ndarray, *, upsample: float = 1.0) -> list[Face]:
        """All faces in a uint8 HxWx3 BGR image, largest first.

        ``upsample > 1`` enlarges the image (bicubic) before detection, to find faces smaller than
        ``min_face_size``; boxes and landmarks are still returned in the original image's pixels.
        """
        if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 BGR image, got {bgr.dtype} {bgr.shape}")
        if upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {upsample}")
        if upsample > 1:
            bgr = cv2.resize(bgr, None, fx=upsample, fy=upsample, interpolation=cv2.INTER_CUBIC)
        rgb = bgr[:, :, ::-1].astype(np.float32)
        boxes = self._propose(rgb)
        if len(boxes):
            boxes = self._refine(rgb, boxes)
        faces = self._output(rgb, boxes) if len(boxes) else []
        if upsample > 1:
            faces = [Face(f.box / upsample, f.score, f.landmarks / upsample) for f in faces]
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def _scales(self, height: int, width: int) -> list[float]:
        scale = _PNET_CELL / self.min_face_size
        side = min(height, width) * scale
        scales = []
        while side >= _PNET_CELL:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def _propose(self, rgb: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> squared candidate boxes ``[n, 5]`` (x1, y1, x2, y2, score)."""
        height, width = rgb.shape[:2]
        found = []
        for scale in self._scales(height, width):
            resized = cv2.resize(rgb, (int(width * scale + 1), int(height * scale + 1)), interpolation=cv2.INTER_AREA)
            offsets, prob = self.pnet(torch.from_numpy(_normalise(resized))[None].to(self.device))
            offsets, prob = offsets[0].cpu().numpy(), prob[0].cpu().numpy()
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if not len(ys):
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float64)
            boxes = np.concatenate(
                [
                    np.floor((_PNET_STRIDE * cells + 1) / scale),
                    np.floor((_PNET_STRIDE * cells + _PNET_CELL) / scale),
                    prob[ys, xs, None],
                    offsets[:, ys, xs].T,
                ],
                axis=1,
            )
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        if not found:
            return np.empty((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        calibrated = _calibrate(boxes[:, :4], boxes[:, 5:9], inclusive=False)
        return _square(np.concatenate([calibrated, boxes[:, 4:5]], axis=1))

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net rejects and calibrates the candidates."""
        boxes, crops = self._crops(rgb, boxes, 24)
        if not len(boxes):
            return boxes
        offsets, prob = (t.cpu().numpy() for t in self.rnet(crops))
        keep = prob > self.thresholds[1]
        boxes, offsets = np.concatenate([boxes[keep, :4], prob[keep, None]], axis=1), offsets[keep]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes, offsets = boxes[keep], offsets[keep]
        return _square(np.concatenate([_calibrate(boxes, offsets), boxes[:, 4:5]], axis=1))

    def _output(self, rgb: np.ndarray, boxes: np.ndarray) -> list[Face]:
        """Stage 3: O-Net scores, calibrates and places the five landmarks."""
        boxes, crops = self._crops(rgb, boxes, 48)
        if not len(boxes):
            return []
        offsets, points, prob = (t.cpu().numpy() for t in self.onet(crops))
        keep = prob > self.thresholds[2]
        boxes, offsets, points, prob = boxes[keep], offsets[keep], points[keep], prob[keep]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        landmarks = np.stack([boxes[:, 0:1] - 1 + w * points[:, :5], boxes[:, 1:2] - 1 + h * points[:, 5:]], axis=2)
        boxes = _calibrate(boxes, offsets)
        keep = nms(boxes, prob, 0.7, mode="min")
        return [Face(boxes[i].astype(np.float64), float(prob[i]), landmarks[i].astype(np.float64)) for i in keep]

    def _crops(self, rgb: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, torch.Tensor]:
        """Each box's window (zero-padded where it leaves the image) resized to ``size``; boxes with
        an empty window are dropped, so the returned boxes match the crops."""
        height, width = rgb.shape[:2]
        kept, crops = [], []
        for k, (x1, y1, x2, y2) in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
            left, top, right, bottom = x1 - 1, y1 - 1, x2, y2  # 0-based, right/bottom exclusive
            if right <= left or bottom <= top:
                continue
            window = np.zeros((bottom - top, right - left, 3), dtype=np.float32)
            sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
            if sx1 <= sx0 or sy1 <= sy0:
                continue
            window[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = rgb[sy0:sy1, sx0:sx1]
            crops.append(cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA))
            kept.append(k)
        if not kept:
            return boxes[:0], torch.empty(0)
        return boxes[kept], torch.from_numpy(_normalise(np.stack(crops))).to(self.device)
