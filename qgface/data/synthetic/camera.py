"""The camera of the synthetic dataset: an image of an identity under a :class:`Variation`.

``sample_variation`` draws one image's nuisance (pose, expression, age, light, background, noise);
``render`` turns the identity's canonical layer (``faces``) by yaw/pitch through a depth model,
places it in any output frame with exact landmarks, lights it and adds background and sensor noise;
``render_aligned`` crops as an aligner would; ``degrade`` makes a surveillance-like copy.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from qgface.data.synthetic.faces import MARGIN, SS, TEMPLATE, Identity, Variation, expressive_layer, uniform

__all__ = ["sample_variation", "render", "render_aligned", "similarity_fit", "degrade"]


def sample_variation(
    rng: np.random.Generator,
    *,
    yaw_deg: float = 10.0,
    yaw_range: tuple[float, float] | None = None,
    pitch_deg: float = 6.0,
    roll_deg: float = 6.0,
    expression: float = 1.0,
    age_sd: float = 0.06,
    age_shift: float = 0.0,
    light: float = 1.0,
    noise: tuple[float, float] = (0.5, 2.0),
    align_noise: float = 0.7,
) -> Variation:
    """Random nuisance parameters of one image; ``yaw_range`` (degrees) draws a half-profile of random side."""

    def clipped(sd: float) -> float:
        return float(np.clip(rng.normal(0, sd), -2 * sd, 2 * sd))

    yaw = clipped(yaw_deg) if yaw_range is None else float(rng.choice([-1, 1]) * rng.uniform(*yaw_range))
    return Variation(
        yaw=math.radians(yaw),
        pitch=math.radians(clipped(pitch_deg)),
        roll=math.radians(clipped(roll_deg)),
        mouth_open=expression * max(0.0, float(rng.normal(0, 0.35))),
        smile=float(np.clip(expression * rng.normal(0.2, 0.45), -0.6, 1.2)),
        brow_raise=expression * float(rng.normal(0, 0.5)),
        eye_open=float(np.clip(1 - expression * abs(rng.normal(0, 0.25)), 0.15, 1.0)),
        age=age_shift + float(rng.normal(0, age_sd)),
        glasses=bool(rng.random() > 0.2),
        light=(uniform(rng, 0, 2 * math.pi), light * uniform(rng, 0, 0.3), math.exp(light * rng.normal(0, 0.12))),
        cast=tuple(np.exp(light * rng.normal(0, 0.06, 3)).tolist()),
        gamma=math.exp(light * rng.normal(0, 0.1)),
        noise=uniform(rng, *noise),
        align_noise=align_noise,
        background=int(rng.integers(2**31)),
        clothes=tuple(rng.uniform(20, 230, 3).tolist()),
    )


def _depth(idn: Identity, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the face surface above the image plane (a paraboloid head plus a nose ridge)."""
    cx, cy, a, b, _ = idn.head
    tip_x, tip_y, nose_w, nose_h = idn.nose
    z = 0.6 * 1.2 * a * np.clip(1 - ((x - cx) / (1.2 * a)) ** 2 - ((y - cy) / (1.15 * b)) ** 2, 0, None)
    ridge_y = (idn.eyes[:, 1].mean() + tip_y) / 2 + 4
    return z + 1.3 * nose_h * np.exp(-((x - tip_x) ** 2) / (2 * (2.5 + 0.3 * nose_w) ** 2) - (y - ridge_y) ** 2 / 162)


def _landmarks_canonical(idn: Identity, var: Variation) -> np.ndarray:
    mouth = idn.mouth + [[-var.smile, -var.smile * 2.5], [var.smile, -var.smile * 2.5]]
    return np.concatenate([idn.eyes, [idn.nose[:2]], mouth])


def _pose(idn: Identity, var: Variation, pts: np.ndarray) -> np.ndarray:
    """Canonical points -> their place in the frontal frame after turning the head (yaw, pitch)."""
    cx, cy = idn.head[:2]
    z = _depth(idn, pts[:, 0], pts[:, 1])
    return np.stack(
        [
            cx + (pts[:, 0] - cx) * math.cos(var.yaw) + z * math.sin(var.yaw),
            cy + (pts[:, 1] - cy) * math.cos(var.pitch) + z * math.sin(var.pitch),
        ],
        1,
    )


def _unpose(idn: Identity, var: Variation, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_pose` by damped fixed-point iteration (exact away from self-occlusion)."""
    cx, cy = idn.head[:2]
    x, y = u.copy(), v.copy()
    steep = max(abs(var.yaw), abs(var.pitch)) > 0.3  # damp where the nose makes the iteration oscillate
    for _ in range((12 if steep else 4) if var.yaw or var.pitch else 0):
        z = _depth(idn, x, y)
        x += (0.6 if steep else 1.0) * (cx + (u - cx - z * math.sin(var.yaw)) / math.cos(var.yaw) - x)
        y += (0.6 if steep else 1.0) * (cy + (v - cy - z * math.sin(var.pitch)) / math.cos(var.pitch) - y)
    return x, y


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) taking ``src`` points to ``dst``; 2x3."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    s, d = src - src.mean(0), dst - dst.mean(0)
    z = np.vdot(s[:, 0] + 1j * s[:, 1], d[:, 0] + 1j * d[:, 1]) / np.sum(s**2)
    rot = np.array([[z.real, -z.imag], [z.imag, z.real]])
    return np.concatenate([rot, (dst.mean(0) - rot @ src.mean(0))[:, None]], 1)


def _soft(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x, -30, 30)))


def _backdrop(var: Variation, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Background clutter and clothes as a function of frontal-frame coordinates (frame independent)."""
    rng = np.random.default_rng([var.background, 0])
    out = np.empty(u.shape + (3,), np.float32)
    out[:] = rng.uniform(40, 220) + rng.uniform(-40, 40, 3)
    ang = rng.uniform(0, 2 * math.pi)
    out += (((u - 56) * math.cos(ang) + (v - 56) * math.sin(ang)) * rng.uniform(0, 0.8))[..., None]
    for _ in range(int(rng.integers(1, 5))):
        c, r = rng.uniform(-40, 152, 2), rng.uniform(8, 50, 2)
        inside = _soft((1 - np.maximum(np.abs(u - c[0]) / r[0], np.abs(v - c[1]) / r[1])) * min(r) / 1.5)
        out += inside[..., None] * (rng.uniform(20, 235) + rng.uniform(-30, 30, 3) - out)
    shoulders = _soft((1 - np.hypot((u - 56) / 64, (v - 152) / 40)) * 20)[..., None]
    return out + shoulders * (np.asarray(var.clothes, np.float32) - out)


def render(
    idn: Identity, var: Variation, frame: np.ndarray, size: tuple[int, int], oversample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``idn`` under ``var``; ``frame`` (2x3) maps the frontal 112 frame to output pixels.

    Returns the uint8 BGR image of ``size`` = (width, height) and its 5 landmarks
    (eye centres, nose tip, mouth corners) in output pixel coordinates, exact by construction.
    The face is sampled at ``oversample`` times the output resolution and area-averaged down.
    """
    layer = expressive_layer(idn, var)
    w, h = size
    big_w, big_h = oversample * w, oversample * h
    step = 4 * oversample  # the maps are smooth: compute them on a grid of 4 output pixels, then upsample
    cols, rows = -(-big_w // step), -(-big_h // step)
    gx = ((np.arange(cols) + 0.5) * step - 0.5 - (oversample - 1) / 2) / oversample  # output pixels
    gy = ((np.arange(rows) + 0.5) * step - 0.5 - (oversample - 1) / 2) / oversample
    inv = cv2.invertAffineTransform(np.asarray(frame, np.float64))
    ox, oy = np.meshgrid(gx, gy)
    u = inv[0, 0] * ox + inv[0, 1] * oy + inv[0, 2]
    v = inv[1, 0] * ox + inv[1, 1] * oy + inv[1, 2]
    x, y = _unpose(idn, var, u, v)
    direction, strength, ambient = var.light
    light = ambient * (1 + strength * ((u - 56) * math.cos(direction) + (v - 60) * math.sin(direction)) / 56)
    maps = np.dstack([(x + MARGIN) * SS + (SS - 1) / 2, (y + MARGIN) * SS + (SS - 1) / 2]).astype(np.float32)
    maps = cv2.resize(maps, (cols * step, rows * step), interpolation=cv2.INTER_LINEAR)[:big_h, :big_w]
    fg = cv2.remap(layer, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    fg = (cv2.resize(fg, (w, h), interpolation=cv2.INTER_AREA) if oversample > 1 else fg).astype(np.float32)
    # the backdrop is smooth, so compositing after the downsampling loses nothing
    back = _backdrop(var, u, v).astype(np.float32)
    shade = (light[..., None] * np.asarray(var.cast)).astype(np.float32)

    def up(a: np.ndarray) -> np.ndarray:  # coarse grid -> output pixels, same alignment as the maps
        return cv2.resize(a, (cols * 4, rows * 4), interpolation=cv2.INTER_LINEAR)[:h, :w]

    img = fg[..., :3] + up(back) * (1 - fg[..., 3:] * np.float32(1 / 255))
    img *= up(shade)
    start = np.random.default_rng([var.background, 1]).integers(_NOISE.size - img.size)
    img += _NOISE[start : start + img.size].reshape(img.shape) * np.float32(var.noise)
    lut = np.clip(255 * (np.arange(256) / 255) ** var.gamma + 0.5, 0, 255).astype(np.uint8)
    img = cv2.LUT(np.clip(img + 0.5, 0, 255).astype(np.uint8), lut)
    marks = _pose(idn, var, _landmarks_canonical(idn, var)) @ frame[:, :2].T + frame[:, 2]
    return img, marks


def render_aligned(idn: Identity, var: Variation, size: int = 112) -> np.ndarray:
    """The face as an aligner would crop it: its landmarks (+ ``var.align_noise``) fitted to the template."""
    marks = _pose(idn, var, _landmarks_canonical(idn, var))
    marks = marks + np.random.default_rng([var.background, 2]).normal(0, var.align_noise, marks.shape)
    return render(idn, var, similarity_fit(marks, TEMPLATE * size / 112), (size, size))[0]


_NOISE = np.random.default_rng(12345).standard_normal(1 << 21, np.float32)  # sliced per image: fast sensor noise
_INTERP = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC)


def degrade(
    img: np.ndarray,
    face_px: int,
    rng: np.random.Generator,
    *,
    blur: tuple[float, float] = (0.2, 0.9),
    jpeg: tuple[int, int] = (20, 60),
    noise: tuple[float, float] = (1.0, 5.0),
    upscale: bool = True,
) -> np.ndarray:
    """Surveillance-like copy of an aligned face: downscale to ``face_px`` with a random interpolation,
    Gaussian blur (sigma in low-res pixels), sensor noise, low-quality JPEG, then (``upscale``) back
    to the input size with a random interpolation (docs/method.md §2 makes training views the same way)."""
    h, w = img.shape[:2]
    small_w, small_h = max(4, round(face_px * w / max(h, w))), max(4, round(face_px * h / max(h, w)))
    small = cv2.resize(img, (small_w, small_h), interpolation=_INTERP[rng.integers(4)]).astype(np.float32)
    sigma = uniform(rng, *blur)
    if sigma > 0.05:
        small = cv2.GaussianBlur(small, (0, 0), sigma)
    small += rng.normal(0, uniform(rng, *noise), small.shape).astype(np.float32)
    quality = int(rng.integers(jpeg[0], jpeg[1] + 1))
    ok, buf = cv2.imencode(".jpg", np.clip(small + 0.5, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    small = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    up = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)[rng.integers(3)]  # smooth, like camera software
    return cv2.resize(small, (w, h), interpolation=up) if upscale else small
