"""The training views of a source image (docs/method.md §2): H, L, AdaFace-augmented, flip-only.

Every transform takes a uint8 ``112x112x3`` BGR array and a ``numpy.random.Generator`` and returns
a new uint8 array of the same shape (inputs are never modified). All randomness comes from the
generator, so a view is a pure function of ``(image, generator state)``. The transforms stay in
uint8 OpenCV operations (look-up tables, ``addWeighted``) because the L view runs for every
training image on the data-loading CPUs.

Samplers of random parameters follow torchvision's semantics (``RandomResizedCrop.get_params``,
``ColorJitter``), which the published implementation uses, re-expressed on BGR arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from qgface.vocab.choices import VIEW_KINDS

__all__ = [
    "INTERPOLATIONS",
    "VIEW_KINDS",
    "hflip",
    "random_rescale",
    "resized_crop_box",
    "random_resized_crop",
    "zero_pad_crop",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "color_jitter",
    "random_rotation",
    "h_view",
    "l_view",
    "adaface_view",
    "make_views",
    "num_views",
]

INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)
"""The interpolations a rescale draws from (nearest, linear, area, cubic, lanczos)."""

CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
L_CROP_SCALE = (0.8, 1.0)
L_JITTER = 0.2
MAX_ROTATION_DEG = 45.0
ADAFACE_CROP_SCALE = (0.2, 1.0)
ADAFACE_LOWRES_RANGE = (0.2, 1.0)
ADAFACE_JITTER = 0.5

_LEVELS = np.arange(256, dtype=np.float32)


def _happens(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p`` (never for 0, always for 1)."""
    return p > 0.0 and rng.random() < p


def hflip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip with probability 0.5 (a copy either way)."""
    return cv2.flip(img, 1) if rng.random() < 0.5 else img.copy()


def random_rescale(
    img: np.ndarray, rng: np.random.Generator, ratio_range: Sequence[float], jpeg_quality: int | None = None
) -> np.ndarray:
    """Down to side ``int(size*r)``, ``r ~ U(ratio_range)``, then back up (docs/method.md §2, L step 1).

    Each resize draws its own interpolation from :data:`INTERPOLATIONS`; with ``jpeg_quality`` the
    small image goes through a JPEG encode/decode round trip at that quality in between.
    """
    height, width = img.shape[:2]
    ratio = rng.uniform(ratio_range[0], ratio_range[1])
    side = max(1, int(height * ratio))
    small = cv2.resize(img, (side, side), interpolation=INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))])
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a {small.shape} image")
        small = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return cv2.resize(small, (width, height), interpolation=INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))])


def resized_crop_box(
    rng: np.random.Generator, height: int, width: int, scale: Sequence[float], ratio: Sequence[float] = CROP_RATIO
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop as torchvision's ``RandomResizedCrop`` samples it.

    Area fraction ``U(scale)``, aspect ratio log-uniform in ``ratio``, up to 10 tries; otherwise
    the centre crop with the aspect ratio clamped into ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, scale: Sequence[float] = L_CROP_SCALE) -> np.ndarray:
    """Random resized crop (torchvision semantics), resized back to the input size (bilinear)."""
    height, width = img.shape[:2]
    top, left, h, w = resized_crop_box(rng, height, width, scale)
    return cv2.resize(img[top : top + h, left : left + w], (width, height), interpolation=cv2.INTER_LINEAR)


def zero_pad_crop(img: np.ndarray, rng: np.random.Generator, scale: Sequence[float] = ADAFACE_CROP_SCALE) -> np.ndarray:
    """AdaFace's crop: keep a random-resized-crop box in place, black out everything else.

    The box is sampled as :func:`resized_crop_box`; the crop is not resized, so the face keeps its
    scale and position and only loses what lies outside the box.
    """
    top, left, h, w = resized_crop_box(rng, img.shape[0], img.shape[1], scale)
    out = np.zeros_like(img)
    out[top : top + h, left : left + w] = img[top : top + h, left : left + w]
    return out


def _apply_lut(img: np.ndarray, values: np.ndarray) -> np.ndarray:
    lut = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """``x * factor``, rounded and clipped to uint8."""
    return _apply_lut(img, _LEVELS * factor)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean of the greyscale image: ``mean + factor * (x - mean)``."""
    mean = cv2.mean(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))[0]
    return _apply_lut(img, _LEVELS * factor + mean * (1.0 - factor))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the greyscale image (ITU-R 601 weights on B, G, R): ``grey + factor * (x - grey)``."""
    grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(img, factor, grey, 1.0 - factor, 0.0)


_JITTERS = (adjust_brightness, adjust_contrast, adjust_saturation)


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness/contrast/saturation jitter, torchvision ``ColorJitter(s, s, s, hue=0)`` semantics.

    Factors ``U(max(0, 1-s), 1+s)`` each (:func:`adjust_brightness`, :func:`adjust_contrast`,
    :func:`adjust_saturation`), applied in a random order.
    """
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    order = rng.permutation(3)
    factors = [rng.uniform(lo, hi) for _ in range(3)]
    out = img
    for op in order:
        out = _JITTERS[op](out, factors[op])
    return out


def random_rotation(img: np.ndarray, rng: np.random.Generator, max_degrees: float = MAX_ROTATION_DEG) -> np.ndarray:
    """Rotation by ``U(-max, max)`` degrees (counter-clockwise positive) about the image centre.

    Nearest-neighbour, black corners, same size (torchvision ``RandomRotation`` defaults).
    """
    height, width = img.shape[:2]
    angle = rng.uniform(-max_degrees, max_degrees)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(
        img, matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def h_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The high-quality view (docs/method.md §2): random horizontal flip only."""
    return hflip(img, rng)


def l_view(img: np.ndarray, rng: np.random.Generator, data_cfg: Any) -> np.ndarray:
    """The low-quality view (docs/method.md §2, steps 1-5 in order).

    ``data_cfg`` supplies ``lowres_range``, ``jpeg_quality``, ``crop_p``, ``photometric_p`` and
    ``rotation_p`` (``qgface.config.DataConfig``).
    """
    out = random_rescale(img, rng, data_cfg.lowres_range, jpeg_quality=data_cfg.jpeg_quality)
    if _happens(rng, data_cfg.crop_p):
        out = random_resized_crop(out, rng, L_CROP_SCALE)
    if _happens(rng, data_cfg.photometric_p):
        out = color_jitter(out, rng, L_JITTER)
    if _happens(rng, data_cfg.rotation_p):
        out = random_rotation(out, rng)
    return hflip(out, rng)


def adaface_view(img: np.ndarray, rng: np.random.Generator, p: float, crop: bool = True) -> np.ndarray:
    """AdaFace's augmentation (ablation A-C, docs/method.md §2), then a random flip.

    Each with probability ``p``, in this order: zero-padded crop (:func:`zero_pad_crop`, scale
    (0.2, 1)), low-resolution rescale ``U(0.2, 1)`` without JPEG, colour jitter 0.5. ``crop=False``
    leaves the crop out (``data.adaface_crop``, to study its effect).
    """
    out = img
    if crop and _happens(rng, p):
        out = zero_pad_crop(out, rng)
    if _happens(rng, p):
        out = random_rescale(out, rng, ADAFACE_LOWRES_RANGE)
    if _happens(rng, p):
        out = color_jitter(out, rng, ADAFACE_JITTER)
    return hflip(out, rng)


def num_views(views: str) -> int:
    """Views per source image: 2 for ``lh`` and ``adaface``, 1 for the ``flip`` baseline."""
    if views not in VIEW_KINDS:
        raise ValueError(f"data.views: unknown view recipe {views!r}; expected one of {', '.join(VIEW_KINDS)}")
    return 1 if views == "flip" else 2


def make_views(img: np.ndarray, rng: np.random.Generator, views: str, data_cfg: Any) -> list[np.ndarray]:
    """The views of one source image: ``[H, L]`` (lh), two AdaFace views (adaface) or ``[flip]``."""
    if num_views(views) == 1:
        return [hflip(img, rng)]
    if views == "lh":
        return [h_view(img, rng), l_view(img, rng, data_cfg)]
    p, crop = data_cfg.adaface_p, data_cfg.adaface_crop
    return [adaface_view(img, rng, p, crop), adaface_view(img, rng, p, crop)]
