"""Shots: one synthetic image each, ``(kind, identity, stream, index, options)``, rendered from its key alone.

A shot's randomness is seeded by ``(seed, stream, identity, index)``, so any subset of a dataset
regenerates identically. :class:`Plan` collects the shots of the evaluation sets by key and renders
them with a :class:`Renderer`, a pool of spawned processes.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import cv2
import numpy as np

from qgface.data.images import encode_jpeg
from qgface.data.synthetic.camera import degrade, render, render_aligned, sample_variation
from qgface.data.synthetic.faces import Identity, make_identity

STREAM = {
    "train": 10,
    "lfw": 11,
    "cfp_fp": 12,
    "agedb_30": 13,
    "calfw": 14,
    "cplfw": 15,
    "tinyface": 16,
    "scface": 17,
    "IJBB": 18,
    "IJBC": 19,
    "camera": 20,
    "IJBS": 21,
}
"""random stream of every image family: the second part of each shot's seed"""
_SCFACE_PX = {1: (10, 14), 2: (20, 28), 3: (40, 56)}  # face size in pixels per distance (1 = farthest)


def render_shot(seed: int, shot: tuple) -> Any:
    """Render one shot ``(kind, identity, stream, index, options)``; the result depends on nothing else."""
    kind, number, stream, index, opts = shot
    idn = make_identity(seed, number)
    rng = np.random.default_rng([seed, stream, number, index])
    if kind == "aligned":  # training and HQ pairs: RGB-order JPEG for .rec/.bin
        return encode_jpeg(render_aligned(idn, sample_variation(rng, **opts)), 95)
    if kind == "tiny":  # TinyFace: (original low-res file, 112x112 aligned upscaled copy), plain JPEGs
        var = sample_variation(rng, yaw_deg=15, pitch_deg=10, light=1.5, noise=(1, 3))
        lo, hi = opts["px"]
        small = degrade(
            render_aligned(idn, var), int(rng.integers(lo, hi + 1)), rng, upscale=False, **opts.get("degrade", {})
        )
        return _jpeg(small, 90), _jpeg(cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC), 95)
    if kind == "scface":
        return _jpeg(_scface(idn, rng, seed, **opts), 95)
    if kind == "loose":
        return _loose(idn, seed, stream, number, opts)
    if kind == "ijbs":
        return _jpeg(_ijbs(idn, rng, seed, stream, number, **opts), 92)
    raise ValueError(f"unknown synthetic shot kind {kind!r}")


def _jpeg(bgr: np.ndarray, quality: int) -> bytes:
    return encode_jpeg(bgr, quality)  # OpenCV BGR in = an ordinary JPEG on disk, read back by cv2.imread


def _scface(idn: Identity, rng: np.random.Generator, seed: int, camera: int, distance: int) -> np.ndarray:
    """A surveillance still (camera above the head, per-camera optics) or the frontal mugshot (camera 0)."""
    if camera == 0:
        var = sample_variation(
            rng, yaw_deg=2, pitch_deg=2, roll_deg=1, expression=0.2, light=0.3, noise=(0.3, 1.0), align_noise=0.3
        )
        return render_aligned(idn, var)
    cam = np.random.default_rng([seed, STREAM["camera"], camera])  # fixed per camera
    pitch = {1: 8.0, 2: 14.0, 3: 22.0}[distance]
    var = sample_variation(rng, yaw_deg=12, pitch_deg=3, light=1.3, noise=(1, 3))
    var = dataclasses.replace(
        var, pitch=math.radians(pitch + float(rng.normal(0, 3))), cast=tuple(np.exp(cam.normal(0, 0.12, 3)).tolist())
    )
    img = render_aligned(idn, var)
    if camera >= 6:  # infrared: one channel, skin bright, contrast stretched
        grey = img @ np.array([0.1, 0.3, 0.6]) * 1.25 + 10
        img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    lo, hi = _SCFACE_PX[distance]
    blur = cam.uniform(0.2, 0.6)
    return degrade(img, int(rng.integers(lo, hi + 1)), rng, blur=(blur, blur + 0.4), jpeg=(30, 75), noise=(1, 4))


def _loose(idn: Identity, seed: int, stream: int, number: int, opts: dict) -> tuple[bytes, np.ndarray, float]:
    """IJB loose crop: the face at a random similarity in a 150-250 px image; frames of a media share a
    base variation (a video). Returns (JPEG, exact 5 landmarks, detector score)."""
    media_rng = np.random.default_rng([seed, stream, number, opts["media"]])
    rng = np.random.default_rng([seed, stream, number, opts["media"], opts["frame"]])
    var = sample_variation(media_rng, yaw_deg=15, pitch_deg=8, roll_deg=8, light=1.3)
    var = dataclasses.replace(
        var,
        yaw=var.yaw + float(rng.normal(0, 0.05)),
        mouth_open=max(0.0, var.mouth_open + float(rng.normal(0, 0.1))),
        background=int(rng.integers(2**31)),
    )
    size = 2 * int(media_rng.integers(75, 126))
    scale = media_rng.uniform(0.55, 0.75) * size / 112 * math.exp(rng.normal(0, 0.02))
    angle = var.roll + float(rng.normal(0, 0.02))
    centre = size / 2 + media_rng.normal(0, 0.04 * size, 2) + rng.normal(0, 1, 2)
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    frame = np.concatenate([rot, (centre - rot @ [55.5, 55.5])[:, None]], 1)
    img, marks = render(idn, var, frame, (size, size), oversample=1)
    quality = media_rng.random()
    score = 0.95 + 0.05 * rng.random()
    if quality < 0.6:  # 35% medium, 25% low quality media
        face_px = media_rng.uniform(16, 32) if quality < 0.25 else media_rng.uniform(36, 64)
        img = degrade(
            img, max(8, round(size * face_px / (112 * scale))), rng, jpeg=(20, 50) if quality < 0.25 else (50, 85)
        )
        score = 0.5 + 0.3 * rng.random() if quality < 0.25 else 0.8 + 0.15 * rng.random()
    return _jpeg(img, 92), marks, score


def _ijbs(
    idn: Identity, rng: np.random.Generator, seed: int, stream: int, number: int, video: int, frame: int
) -> np.ndarray:
    """IJB-S aligned crop: an enrolment photo (``video`` 0: near frontal, mild light) or a surveillance
    frame (frames of one video share pose, light and a 10-28 px face size; each frame is then degraded)."""
    if video == 0:
        return render_aligned(
            idn,
            sample_variation(
                rng, yaw_deg=3, pitch_deg=3, roll_deg=2, expression=0.3, light=0.4, noise=(0.3, 1.0), align_noise=0.3
            ),
        )
    video_rng = np.random.default_rng([seed, stream, number, video])
    var = sample_variation(video_rng, yaw_deg=20, pitch_deg=12, light=1.5, noise=(1, 3))
    var = dataclasses.replace(var, yaw=var.yaw + float(rng.normal(0, 0.05)), background=int(rng.integers(2**31)))
    face_px = int(video_rng.integers(10, 29))
    return degrade(render_aligned(idn, var), face_px, rng, blur=(0.4, 1.2), jpeg=(20, 60), noise=(2, 6))


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _render_group(args: tuple[int, list[tuple]]) -> list:
    seed, shots = args
    return [render_shot(seed, shot) for shot in shots]


class Renderer:
    """Renders groups of shots, results in order, in ``workers`` fresh (``spawn``) processes.

    Not ``fork``: a child forked from a process whose OpenCV thread pool has run deadlocks. So, as
    for any multiprocessing code, a script calling this at top level needs an ``if __name__ ==
    "__main__":`` guard; without one the pool breaks with BrokenProcessPool.
    """

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
            )

    def map(self, seed: int, groups: list[list[tuple]]) -> Iterator[list]:
        jobs = [(seed, g) for g in groups]
        return self.pool.map(_render_group, jobs) if self.pool else map(_render_group, jobs)

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(cancel_futures=True)


class Plan:
    """Every evaluation shot by key, with per-(stream, identity) image counters."""

    def __init__(self) -> None:
        self.shots: dict[tuple, tuple] = {}
        self._next: dict[tuple[int, int], int] = {}

    def add(
        self, key: tuple, kind: str, number: int, stream: int, opts: dict | None = None, index: int | None = None
    ) -> None:
        if index is None:
            index = self._next.get((stream, number), 0)
            self._next[(stream, number)] = index + 1
        self.shots[key] = (kind, number, stream, index, opts or {})

    def render(self, renderer: Renderer, seed: int) -> dict[tuple, Any]:
        by_identity: dict[int, list[tuple]] = {}
        for key, shot in self.shots.items():
            by_identity.setdefault(shot[1], []).append(key)
        numbers = sorted(by_identity)
        groups = [[self.shots[k] for k in by_identity[n]] for n in numbers]
        results: dict[tuple, Any] = {}
        for n, outputs in zip(numbers, renderer.map(seed, groups)):
            results.update(zip(by_identity[n], outputs))
        return results
