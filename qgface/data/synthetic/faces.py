"""Procedural faces for the synthetic mixed-quality dataset (docs/method.md "Conventions": 112x112 BGR faces).

An *identity* is a fixed random face drawn on the ArcFace 112x112 template: head and jaw shape, skin
tone with a smooth blotch pattern, hair style/colour/strands, eyes (iris colour), brows, nose, lips,
and fine identity marks (freckles, moles, stubble, glasses) that survive at 112 px but vanish at
12-24 px. This module draws it, with what a :class:`Variation` changes on the face itself (expression,
age: wrinkles and greying), into a flat "canonical" layer; ``camera`` turns that layer into images.
Every random draw comes from a numpy Generator seeded by ``(seed, identity, ...)``, so any subset
regenerates identically. Coordinates are "canonical": pixels of the frontal aligned 112x112 frame
(centres at integers).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import cv2
import numpy as np

__all__ = ["MARGIN", "SS", "TEMPLATE", "Identity", "Variation", "expressive_layer", "make_identity", "uniform"]

TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float64
)
MARGIN = 40.0  # the canonical layer extends this far beyond the 112 frame (loose crops show it)
SS = 2  # supersampling of the canonical layer
_SIDE = int((112 + 2 * MARGIN) * SS)
_SKIN = (np.array([190, 210, 240.0]), np.array([45, 65, 100.0]))  # BGR light, dark
_HAIR = np.array([[20, 20, 25], [30, 40, 60], [45, 75, 110], [110, 170, 200], [35, 70, 150], [150, 150, 150.0]])
_IRIS = np.array([[30, 55, 90], [25, 30, 40], [160, 110, 70], [70, 110, 80], [50, 95, 120], [140, 130, 120.0]])


@dataclasses.dataclass(frozen=True, eq=False)
class Identity:
    """Fixed random parameters of one synthetic person (canonical coordinates)."""

    key: tuple[int, int]
    tone: float  # 0 = light .. 1 = dark skin
    skin: np.ndarray
    head: tuple[float, float, float, float, float]  # cx, cy, half-width, half-height, jaw narrowing
    hair: np.ndarray  # BGR
    hair_kind: int  # 0 short, 1 medium, 2 long, 3 bald, 4 curly
    hairline: float
    eyes: np.ndarray  # 2x2 eye centres
    eye_wh: tuple[float, float]
    iris: np.ndarray
    brow: tuple[float, float, float, float]  # thickness, arch, slope, height above the eye
    nose: tuple[float, float, float, float]  # tip x, tip y, half-width, bump height
    mouth: np.ndarray  # 2x2 corners
    lips: tuple[float, float, np.ndarray]  # upper, lower thickness, colour
    beard: int  # 0 none, 1 stubble, 2 moustache, 3 full
    glasses: tuple[float, np.ndarray] | None  # frame half-size factor, colour
    age: float
    greying: float

    @property
    def coarse(self) -> np.ndarray:
        """Attributes still visible at very low resolution (for picking look-alike impostors)."""
        return np.concatenate([[self.tone * 3], self.hair / 64.0, [self.hair_kind == 3, self.glasses is not None]])


@dataclasses.dataclass(frozen=True)
class Variation:
    """One image's nuisance parameters (angles in radians)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    mouth_open: float = 0.0
    smile: float = 0.0
    brow_raise: float = 0.0
    eye_open: float = 1.0
    age: float = 0.0  # added to the identity's age
    glasses: bool = True  # wear them if the identity has glasses
    light: tuple[float, float, float] = (0.0, 0.0, 1.0)  # gradient direction, gradient strength, ambient
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    noise: float = 1.0
    align_noise: float = 0.0  # landmark error of the aligner (px)
    background: int = 0  # seed of the background clutter
    clothes: tuple[float, float, float] = (90.0, 90.0, 90.0)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One U(lo, hi) draw as a Python float."""
    return float(rng.uniform(lo, hi))


@functools.lru_cache(maxsize=16)
def make_identity(seed: int, number: int) -> Identity:
    """The identity ``number`` of the synthetic population ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, 0, number])
    tone = float(rng.beta(1.3, 1.3))
    skin = _SKIN[0] + tone * (_SKIN[1] - _SKIN[0]) + rng.normal(0, 7, 3)
    a, b = uniform(rng, 31, 38), uniform(rng, 45, 51)
    head = (56.0 + rng.normal(0, 0.8), 60.0 + rng.normal(0, 1.5), a, b, uniform(rng, 0.68, 0.95))
    eye_dist, eye_y = 35.2 + rng.normal(0, 1.6), 51.6 + rng.normal(0, 1.3)
    eyes = np.array([[56 - eye_dist / 2, eye_y], [56 + eye_dist / 2, eye_y + rng.normal(0, 0.4)]])
    hair_idx = int(rng.choice(6, p=[0.3, 0.22, 0.2, 0.12, 0.08, 0.08]))
    mouth_w, mouth_y = 29.2 + rng.normal(0, 2.2), 92.3 + rng.normal(0, 1.8)
    mouth = np.array([[56 - mouth_w / 2, mouth_y], [56 + mouth_w / 2, mouth_y]])
    lip = skin * np.array([0.72, 0.68, 0.9]) + rng.normal(0, 8, 3)
    glasses = (
        (uniform(rng, 1.1, 1.5), rng.choice([20.0, 60.0, 140.0]) + rng.normal(0, 10, 3))
        if rng.random() < 0.15
        else None
    )
    return Identity(
        key=(seed, number),
        tone=tone,
        skin=skin,
        head=head,
        hair=_HAIR[hair_idx] + rng.normal(0, 10, 3),
        hair_kind=int(rng.choice(5, p=[0.35, 0.25, 0.2, 0.1, 0.1])),
        hairline=uniform(rng, 20, 32),
        eyes=eyes,
        eye_wh=(uniform(rng, 5.5, 7.5), uniform(rng, 2.4, 3.6)),
        iris=_IRIS[rng.integers(6)] + rng.normal(0, 10, 3),
        brow=(uniform(rng, 1.8, 4.0), uniform(rng, 0.5, 4.0), uniform(rng, -2.5, 2.5), uniform(rng, 8.5, 11.5)),
        nose=(56.0 + rng.normal(0, 0.6), 71.7 + rng.normal(0, 1.5), uniform(rng, 4.5, 7.5), uniform(rng, 6, 10)),
        mouth=mouth,
        lips=(uniform(rng, 1.5, 3.5), uniform(rng, 2.0, 4.5), lip),
        beard=int(rng.choice(4, p=[0.55, 0.2, 0.12, 0.13])),
        glasses=glasses,
        age=uniform(rng, 0.0, 0.5),
        greying=uniform(rng, 0.2, 1.0),
    )


# ---------------------------------------------------------------- drawing helpers (canonical units)


def _fx(pts: np.ndarray) -> np.ndarray:
    """Canonical points -> layer pixels as OpenCV fixed point (4 fractional bits)."""
    p = (np.asarray(pts, np.float64) + MARGIN) * SS + (SS - 1) / 2
    return np.round(p * 16).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, pts: np.ndarray, colour) -> None:
    cv2.fillPoly(img, [_fx(pts)], _c(colour), cv2.LINE_AA, 4)


def _line(img: np.ndarray, pts: np.ndarray, colour, width: float) -> None:
    cv2.polylines(img, [_fx(pts)], False, _c(colour), max(1, round(width * SS)), cv2.LINE_AA, 4)


def _c(colour) -> tuple:
    return (*(min(255.0, max(0.0, float(v))) for v in colour[:3]), 255.0) if hasattr(colour, "__len__") else colour


@functools.lru_cache(maxsize=64)
def _unit_circle(n: int, t0: float, t1: float) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _ellipse(
    cx: float, cy: float, a: float, b: float, n: int = 48, t0: float = 0.0, t1: float = 2 * math.pi
) -> np.ndarray:
    return _unit_circle(n, t0, t1) * (a, b) + (cx, cy)


@functools.lru_cache(maxsize=16)
def _bezier_weights(n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)
    return np.stack([(1 - t) ** 2, 2 * t * (1 - t), t**2], 1)


def _curve(p0, p1, bend: float, n: int = 12) -> np.ndarray:
    """Quadratic arc from p0 to p1, its middle moved by ``bend`` along -y (up)."""
    (x0, y0), (x1, y1) = p0, p1
    ctrl = np.array([[x0, y0], [(x0 + x1) / 2, (y0 + y1) / 2 - bend], [x1, y1]], np.float64)
    return _bezier_weights(n) @ ctrl


def _face_outline(idn: Identity) -> np.ndarray:
    cx, cy, a, b, jaw = idn.head
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    width = a * (1 - (1 - jaw) * np.clip(s, 0, 1) ** 2)
    return np.stack([cx + width * np.sign(c) * np.abs(c) ** 0.8, cy + b * s], 1)


@functools.lru_cache(maxsize=8)
def _static_layer(seed: int, number: int) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied BGRA layer of everything that no image changes, and the visible-hair mask."""
    idn = make_identity(seed, number)
    rng = np.random.default_rng([idn.key[0], 1, idn.key[1]])
    cx, cy, a, b, _ = idn.head
    layer = np.zeros((_SIDE, _SIDE, 4), np.uint8)
    hair_mask = np.zeros((_SIDE, _SIDE), np.uint8)
    top = _ellipse(cx, cy - 4, a + uniform(rng, 3, 7), b + 2, 60, math.pi, 2 * math.pi)
    if idn.hair_kind != 3:
        bottom = {0: idn.eyes[0, 1] + 6, 1: idn.mouth[0, 1], 2: 112 + MARGIN, 4: idn.nose[1]}[idn.hair_kind]
        w = a + (12 if idn.hair_kind == 4 else 5)
        arc = _ellipse(cx, cy - 4, w, b + 5, 60, math.pi, 2 * math.pi)
        back = np.concatenate([[[cx - w, bottom]], arc, [[cx + w, bottom]]])
        if idn.hair_kind == 4:
            back[1:-1] += (rng.normal(0, 1.2, (60, 1)) + np.sin(np.linspace(0, 40, 60))[:, None] * 2) * [[0, 1]]
        for img, col in ((layer, idn.hair), (hair_mask, 255)):
            _fill(img, back, col)
    neck = [[cx - 0.5 * a, cy + 0.5 * b], [cx + 0.5 * a, cy + 0.5 * b], [cx + 0.55 * a, 120], [cx - 0.55 * a, 120]]
    _fill(layer, np.array(neck), idn.skin * 0.8)
    for side in (-1, 1):
        _fill(layer, _ellipse(cx + side * (a - 1), idn.eyes[0, 1] + 9, 5.5, 11, 24), idn.skin * 0.93)
    outline = _face_outline(idn)
    face_mask = np.zeros((_SIDE, _SIDE), np.uint8)
    _fill(layer, outline, idn.skin)
    cv2.fillPoly(face_mask, [_fx(outline)], 255, cv2.LINE_AA, 4)
    # smooth identity blotches, edge darkening and nose shading as one multiplicative field (face box only)
    x0, y0 = (np.array([cx - a - 1, cy - b - 1]) + MARGIN).astype(int) * SS
    x1, y1 = (np.array([cx + a + 2, cy + b + 2]) + MARGIN).astype(int) * SS
    blot = cv2.resize(rng.normal(0, 1, (7, 7)).astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    xx = (np.arange(x0, x1, dtype=np.float32) / SS - MARGIN - cx) / a
    yy = (np.arange(y0, y1, dtype=np.float32)[:, None] / SS - MARGIN - cy) / b
    shade = np.zeros((_SIDE, _SIDE), np.float32)
    tip_x, tip_y, nose_w, _ = idn.nose
    for side in (-1, 1):
        _line(
            shade,
            _curve((tip_x + side * 3.5, idn.eyes[0, 1] + 4), (tip_x + side * nose_w, tip_y), side * 1.5),
            0.5,
            2.5,
        )
    shade = cv2.GaussianBlur(shade[y0:y1, x0:x1], (0, 0), 2.0 * SS)
    field = 1 + 0.06 * blot - 0.25 * np.clip(xx**2 + yy**2 - 0.55, 0, None) - 0.6 * shade
    box = layer[y0:y1, x0:x1, :3]
    mask = face_mask[y0:y1, x0:x1, None] > 0
    box[:] = np.where(mask, np.clip(box * field[..., None], 0, 255), box).astype(np.uint8)
    # fine identity marks: freckles, moles, nostrils, stubble
    inside = lambda p: (((p[:, 0] - cx) / a) ** 2 + ((p[:, 1] - cy) / b) ** 2) < 0.8  # noqa: E731
    n_freckles = int(rng.choice([0, 0, 15, 40, 80]))
    pts = np.stack([rng.normal(56, 14, n_freckles), rng.normal(70, 9, n_freckles)], 1)
    dots = [_fx(_ellipse(*p, r, r, 8)) for p, r in zip(pts, rng.uniform(0.35, 0.8, n_freckles)) if inside(p[None])[0]]
    cv2.fillPoly(layer, dots, _c(idn.skin * uniform(rng, 0.65, 0.85)), cv2.LINE_AA, 4)
    for _ in range(int(rng.integers(0, 4))):
        p = np.array([[rng.normal(56, 20), rng.normal(68, 18)]])
        if inside(p)[0]:
            _fill(layer, _ellipse(*p[0], *([uniform(rng, 0.8, 1.8)] * 2), 12), idn.skin * 0.45)
    for side in (-1, 1):
        _fill(layer, _ellipse(tip_x + side * nose_w * 0.45, tip_y + 1.2, nose_w * 0.32, 1.1, 16), idn.skin * 0.4)
        wing = _curve(
            (tip_x + side * nose_w * 0.95, tip_y - 3), (tip_x + side * nose_w * 0.6, tip_y + 1.5), side * 1.2, 6
        )
        _line(layer, wing, idn.skin * 0.7, 0.6)
    if idn.beard:
        if idn.beard == 3:
            _fill(layer, outline[(outline[:, 1] > tip_y + 3) & (np.arange(len(outline)) < 37)], idn.hair * 0.9)
        dots = np.stack([rng.uniform(cx - a, cx + a, 700), rng.uniform(tip_y + 5, cy + b, 700)], 1)
        dots = _fx(dots[inside(dots) & (dots[:, 1] > idn.mouth[0, 1] - 9)])[:, 0] // 16
        dot = idn.hair * 0.7 if idn.beard == 3 else (idn.hair + idn.skin) / 2 * 0.85
        layer[dots[:, 1], dots[:, 0], :3] = np.clip(dot, 0, 255).astype(np.uint8)
        _fill(
            layer,
            np.concatenate(
                [
                    _curve(idn.mouth[0] - [2, 2], idn.mouth[1] - [-2, 2], 5),
                    _curve(idn.mouth[1] - [0, 5], idn.mouth[0] - [0, 5], 5),
                ]
            ),
            idn.hair if idn.beard >= 2 else idn.skin * 0.92,
        )
    hair_mask[face_mask > 0] = 0
    if idn.hair_kind != 3:
        hl, ey = idn.hairline, idn.eyes[0, 1] - 14
        xs = np.linspace(cx - a - 1, cx + a + 1, 25)
        rel = (xs - cx) / a
        lower = np.stack([xs, hl + (ey - hl) * rel**4 + rng.normal(0, 0.6, 25)], 1)
        front = np.concatenate([lower, top[::-1]])
        for img, col in ((layer, idn.hair), (hair_mask, 255)):
            _fill(img, front, col)
        ys, xs = np.nonzero(hair_mask[::4, ::4])
        roots = np.stack([xs, ys], 1)[rng.permutation(len(ys))[:180]] * (4 / SS) - MARGIN
        tips = roots + np.stack([rng.normal(0, 1.5, len(roots)), rng.uniform(2, 5, len(roots))], 1)
        strands = [_fx(np.stack([r, t])) for r, t in zip(roots, tips)]
        for k, tint in enumerate((0.6, 0.8, 1.25, 1.45)):
            cv2.polylines(layer, strands[k::4], False, _c(idn.hair * tint), 1, cv2.LINE_AA, 4)
    return layer, hair_mask


@functools.lru_cache(maxsize=4)
def _greyed_layer(seed: int, number: int) -> np.ndarray:
    """The static layer with fully grey hair (blended in with age)."""
    layer, hair_mask = _static_layer(seed, number)
    grey = cv2.convertScaleAbs(layer[..., 3], alpha=170 / 255)
    greyed = layer.copy()
    greyed[..., :3] = np.where(hair_mask[..., None] > 127, grey[..., None], layer[..., :3])
    return greyed


def expressive_layer(idn: Identity, var: Variation) -> np.ndarray:
    """The static layer plus what an image changes: greying, wrinkles, eyes, brows, mouth, glasses."""
    layer = _static_layer(*idn.key)[0]
    age = float(np.clip(idn.age + var.age, 0, 1))
    grey = min(1.0, idn.greying * max(0.0, age - 0.3) * 1.4)
    layer = cv2.addWeighted(layer, 1 - grey, _greyed_layer(*idn.key), grey, 0) if grey > 0.02 else layer.copy()
    cx, cy, a, b, _ = idn.head
    (lx, ey), (rx, _) = idn.eyes
    wrinkle = idn.skin * (1 - 0.35 * age)
    if age > 0.35:
        for k in range(3):
            y = idn.hairline + 6 + k * 4
            _line(layer, _curve((cx - a * 0.45, y), (cx + a * 0.45, y), 1.0 + k * 0.3), wrinkle, 0.5)
        tip_x, tip_y, nose_w, _ = idn.nose
        for side in (-1, 1):
            corner = idn.mouth[(side + 1) // 2]
            fold = _curve((tip_x + side * (nose_w + 2), tip_y - 2), corner + [side * 2.5, 3], side * 1.5, 8)
            _line(layer, fold, wrinkle, 0.7)
    w, h = idn.eye_wh
    brow_t, arch, slope, above = idn.brow
    for side, (ex, eyy) in zip((-1, 1), idn.eyes):
        hh = h * max(0.15, var.eye_open)
        eye = _ellipse(ex, eyy, w, hh, 28)
        _fill(layer, eye, (232, 236, 240))
        ir = _ellipse(ex, eyy, h * 1.05, h * 1.05, 20)
        half = hh * np.sqrt(np.clip(1 - ((ir[:, 0] - ex) / w) ** 2, 0, 1))
        ir[:, 1] = np.clip(ir[:, 1], eyy - half, eyy + half)
        _fill(layer, ir, idn.iris)
        pupil = ir.copy()
        pupil = (pupil - [ex, eyy]) * 0.45 + [ex, eyy]
        _fill(layer, pupil, (15, 15, 15))
        _line(layer, eye[14:], idn.skin * 0.3, 0.8)
        _line(
            layer, _ellipse(ex, eyy - 1.5, w * 1.05, hh + 2.5, 10, math.pi * 1.15, math.pi * 1.85), idn.skin * 0.75, 0.5
        )
        by = eyy - above - var.brow_raise * 2.5
        inner = np.array([ex - side * w * 1.1, by + slope * 0.5])
        outer = np.array([ex + side * w * 1.5, by - slope * 0.5 + 1.5])
        upper = _curve(inner - [0, brow_t / 2], outer, arch, 10)
        lower = _curve(outer, inner + [0, brow_t / 2], arch - 0.5, 10)
        _fill(layer, np.concatenate([upper, lower]), idn.hair * 0.85)
    c0, c1 = idn.mouth + [[-var.smile, -var.smile * 2.5], [var.smile, -var.smile * 2.5]]
    up_t, lo_t, lip = idn.lips
    gap = var.mouth_open * 6
    bend = var.smile * 2.0
    mid_line = _curve(c0, c1, -bend)
    upper = np.concatenate([_curve(c0, c1, up_t + 1 - bend), mid_line[::-1] - [0, gap / 2]])
    lower = np.concatenate([mid_line + [0, gap / 2], _curve(c1, c0, -lo_t - gap / 2 - bend * 0.5)])
    if gap > 0.4:
        _fill(layer, np.concatenate([mid_line - [0, gap / 2], mid_line[::-1] + [0, gap / 2]]), (30, 25, 60))
        if gap > 2:
            teeth = np.concatenate([mid_line[2:-2] - [0, gap / 2], mid_line[2:-2][::-1] - [0, gap / 2 - 1.6]])
            _fill(layer, teeth, (215, 225, 230))
    _fill(layer, upper, lip * 0.9)
    _fill(layer, lower, lip)
    _line(layer, mid_line, lip * 0.45, 0.5)
    if idn.glasses is not None and var.glasses:
        size, col = idn.glasses
        for ex, eyy in idn.eyes:
            _line(layer, _ellipse(ex, eyy + 0.5, w * size + 1.5, w * size * 0.75, 32), col, 0.9)
        bridge = _curve((lx + w * size + 1.5, ey - 1), (rx - w * size - 1.5, ey - 1), 1.5, 6)
        _line(layer, bridge, col, 0.9)
    return layer
