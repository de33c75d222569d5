"""Image bytes <-> BGR arrays, and the network input normalisation (docs/method.md, "Conventions").

Images are BGR (OpenCV order) everywhere in qgface. The JPEGs inside InsightFace ``.rec``/``.bin``
files hold ordinary RGB colour (MXNet's ``mx.image.imdecode`` returns them as RGB, and AdaFace
converts that RGB to BGR). OpenCV's decoder already returns a standard JPEG's pixels in BGR order
and its encoder expects BGR, so for such files (``source_rgb=True`` / ``store_rgb=True``, the
default) no channel swap is done here; ``tests/test_mxnet_interop.py`` checks the decoded array
equals ``mx.image.imdecode(...)[:, :, ::-1]``. ``False`` is for channel-swapped files, i.e. JPEGs
written by encoding a BGR array as if it were RGB (e.g. AdaFace's ``convert.py`` image folders).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["decode_bgr", "encode_jpeg", "normalize_bgr", "to_network_input"]


def decode_bgr(payload: bytes, *, source_rgb: bool = True) -> np.ndarray:
    """Decode image bytes (JPEG/PNG/...) to a uint8 ``HxWx3`` BGR array.

    ``source_rgb=False`` swaps the channels, for files whose stored colour order is BGR.
    Raises ``ValueError`` when the bytes are not a decodable image.
    """
    buf = np.frombuffer(payload, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        head = bytes(payload[:8])
        raise ValueError(
            f"cannot decode {len(payload)} bytes as an image (starts with {head!r}); "
            "expected JPEG/PNG bytes, e.g. an unpacked record payload"
        )
    return img if source_rgb else np.ascontiguousarray(img[:, :, ::-1])


def encode_jpeg(bgr: np.ndarray, quality: int = 95, *, store_rgb: bool = True) -> bytes:
    """JPEG bytes of a uint8 ``HxWx3`` BGR array; the inverse of :func:`decode_bgr` (same flag meaning)."""
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 BGR array, got {bgr.dtype} {bgr.shape}")
    img = bgr if store_rgb else np.ascontiguousarray(bgr[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an array of shape {bgr.shape}")
    return buf.tobytes()


def normalize_bgr(img: np.ndarray) -> np.ndarray:
    """uint8 ``HxWx3`` (or ``NxHxWx3``) BGR -> float32 ``3xHxW`` (``Nx3xHxW``), ``(x/255 - 0.5)/0.5``."""
    if img.dtype != np.uint8 or img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(f"expected uint8 HxWx3 or NxHxWx3 BGR images, got {img.dtype} {img.shape}")
    x = np.ascontiguousarray(np.moveaxis(img, -1, -3), dtype=np.float32)
    x *= 2.0 / 255.0
    x -= 1.0
    return x


def to_network_input(planes: torch.Tensor) -> torch.Tensor:
    """uint8 BGR planes ``[..., 3, H, W]`` -> float32 ``(x/255 - 0.5)/0.5``, on the tensor's device.

    The same float32 operations as :func:`normalize_bgr` (a product by ``float32(2/255)``, then a
    difference with 1, no fused multiply-add), so the values are bit-identical to normalising on the
    CPU; the training step calls this after copying a uint8 batch to the GPU.
    """
    if planes.dtype != torch.uint8:
        raise ValueError(f"expected uint8 image planes, got {planes.dtype} {tuple(planes.shape)}")
    x = planes.to(torch.float32)
    x.mul_(torch.tensor(2.0 / 255.0, dtype=torch.float32, device=x.device))
    x.sub_(torch.tensor(1.0, dtype=torch.float32, device=x.device))
    return x
