"""Five-point similarity alignment (qgface/eval/align.py) recovers known transforms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from qgface.eval.align import ARCFACE_TEMPLATE, align_face, similarity_transform


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([r, [[tx], [ty]]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


@pytest.mark.parametrize("angle,scale,tx,ty", [(0, 1, 0, 0), (17, 2.5, 30, -4), (-120, 0.4, 3, 90)])
def test_recovers_an_exact_similarity(angle, scale, tx, ty):
    known = _similarity(angle, scale, tx, ty)
    src = ARCFACE_TEMPLATE * 1.7 + [5, 11]
    got = similarity_transform(src, _apply(known, src))
    np.testing.assert_allclose(got, known, atol=1e-9)


def test_noisy_points_give_the_least_squares_optimum():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    dst = _apply(_similarity(30, 0.8, 10, 20), src) + rng.normal(0, 2, (5, 2))
    best = similarity_transform(src, dst)
    err = ((_apply(best, src) - dst) ** 2).sum()
    # any perturbation of the 4 similarity parameters makes the residual larger
    a, b = best[0, 0], best[1, 0]
    for delta in np.eye(4) * 1e-3:
        m = np.array(
            [
                [a + delta[0], -(b + delta[1]), best[0, 2] + delta[2]],
                [b + delta[1], a + delta[0], best[1, 2] + delta[3]],
            ]
        )
        assert ((_apply(m, src) - dst) ** 2).sum() > err


def test_mirrored_points_are_not_fitted_with_a_reflection():
    src = ARCFACE_TEMPLATE
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_align_face_moves_landmarks_onto_the_template():
    # a 200x160 "loose crop" made by a known similarity of a 112x112 image with bright landmark dots
    aligned_truth = np.zeros((112, 112, 3), np.uint8)
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        aligned_truth[y - 1 : y + 2, x - 1 : x + 2] = 255
    forward = _similarity(12, 1.6, 20, 15)
    loose = cv2.warpAffine(aligned_truth, forward, (160, 200))
    landmarks = _apply(forward, ARCFACE_TEMPLATE.round())
    out = align_face(loose, landmarks)
    assert out.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        assert out[y, x].min() > 100, (x, y)
    assert out.mean() < 20  # nothing but the dots
