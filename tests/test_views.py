"""The training views (docs/method.md §2): shapes, known answers of each step, and the probability knobs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from qgface.config import DataConfig
from qgface.data import views as V


def face_like(seed: int = 0) -> np.ndarray:
    """A 112x112 BGR image with both smooth structure and fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    base = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    img = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1)
    img += rng.normal(0, 25, img.shape)  # pixel-level detail the L view must remove
    return np.clip(img, 0, 255).astype(np.uint8)


def high_freq_energy(img: np.ndarray) -> float:
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(np.mean(cv2.Laplacian(grey, cv2.CV_32F) ** 2))


def is_uint8_face(out: np.ndarray) -> bool:
    return out.dtype == np.uint8 and out.shape == (112, 112, 3) and out.flags.c_contiguous


def lh_cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


@pytest.mark.parametrize("kind,count", [("lh", 2), ("adaface", 2), ("flip", 1)])
def test_every_view_kind_gives_uint8_faces_and_leaves_input_alone(kind, count):
    img = face_like()
    before = img.copy()
    cfg = lh_cfg(crop_p=1.0, photometric_p=1.0, rotation_p=1.0, adaface_p=1.0)
    for seed in range(5):
        out = V.make_views(img, np.random.default_rng(seed), kind, cfg)
        assert len(out) == count == V.num_views(kind)
        assert all(is_uint8_face(o) for o in out)
    np.testing.assert_array_equal(img, before)


def test_each_transform_returns_uint8_face():
    img, rng = face_like(), np.random.default_rng(0)
    outs = [
        V.hflip(img, rng),
        V.random_rescale(img, rng, (0.1, 0.5), 75),
        V.random_rescale(img, rng, (0.2, 1.0)),
        V.random_resized_crop(img, rng),
        V.zero_pad_crop(img, rng),
        V.color_jitter(img, rng, 0.5),
        V.random_rotation(img, rng),
        V.h_view(img, rng),
        V.l_view(img, rng, lh_cfg()),
        V.adaface_view(img, rng, 1.0),
    ]
    assert all(is_uint8_face(o) for o in outs)


def test_unknown_view_kind_is_refused():
    with pytest.raises(ValueError, match="data.views"):
        V.num_views("lhh")


def test_h_view_is_the_image_or_its_mirror_both_seen():
    img = face_like()
    flipped = 0
    for seed in range(40):
        out = V.h_view(img, np.random.default_rng(seed))
        if np.array_equal(out, img[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, img)
    assert 5 < flipped < 35


def test_l_view_has_less_high_frequency_energy_than_h_view():
    cfg = lh_cfg()
    h_energy, l_energy = [], []
    for seed in range(30):
        img, rng = face_like(seed), np.random.default_rng(seed)
        h, l_ = V.make_views(img, rng, "lh", cfg)
        h_energy.append(high_freq_energy(h))
        l_energy.append(high_freq_energy(l_))
    assert np.mean(l_energy) < 0.25 * np.mean(h_energy)


def test_l_view_with_optional_steps_off_is_rescale_jpeg_then_flip():
    """crop_p = photometric_p = rotation_p = 0: exactly step 1 then step 5, same random stream."""
    cfg = lh_cfg(crop_p=0.0, photometric_p=0.0, rotation_p=0.0, lowres_range=[0.25, 0.25], jpeg_quality=60)
    img = face_like()
    for seed in range(8):
        replay = np.random.default_rng(seed)
        expected = V.hflip(V.random_rescale(img, replay, [0.25, 0.25], jpeg_quality=60), replay)
        np.testing.assert_array_equal(V.l_view(img, np.random.default_rng(seed), cfg), expected)


def test_rescale_is_down_jpeg_up_at_the_drawn_size():
    """With a fixed ratio the result equals down(28 px) -> JPEG(q) -> up, for the drawn interpolations."""
    img = face_like()
    rng, replay = np.random.default_rng(3), np.random.default_rng(3)
    out = V.random_rescale(img, rng, (0.25, 0.25), jpeg_quality=40)
    replay.uniform(0.25, 0.25)
    down = V.INTERPOLATIONS[replay.integers(5)]
    small = cv2.resize(img, (28, 28), interpolation=down)
    small = cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_COLOR)
    up = V.INTERPOLATIONS[replay.integers(5)]
    np.testing.assert_array_equal(out, cv2.resize(small, (112, 112), interpolation=up))


def test_l_view_knobs_at_one_switch_each_step_on():
    base_cfg = dict(crop_p=0.0, photometric_p=0.0, rotation_p=0.0)
    img = face_like()
    white = np.full((112, 112, 3), 255, np.uint8)
    for seed in range(6):
        plain = V.l_view(img, np.random.default_rng(seed), lh_cfg(**base_cfg))
        for knob in ("crop_p", "photometric_p", "rotation_p"):
            out = V.l_view(img, np.random.default_rng(seed), lh_cfg(**{**base_cfg, knob: 1.0}))
            assert not np.array_equal(out, plain), knob
        # rotation: a white image keeps its centre and gets black corners (unless |angle| is tiny)
        rotated = V.l_view(white, np.random.default_rng(seed), lh_cfg(**{**base_cfg, "rotation_p": 1.0}))
        assert rotated[56, 56].min() >= 250
    corners = [
        V.l_view(white, np.random.default_rng(s), lh_cfg(**{**base_cfg, "rotation_p": 1.0}))[0, 0].max()
        for s in range(20)
    ]
    assert sum(c == 0 for c in corners) >= 15


def test_adaface_view_with_p_zero_is_flip_only_and_with_p_one_changes_the_image():
    img = face_like()
    for seed in range(6):
        out = V.adaface_view(img, np.random.default_rng(seed), 0.0)
        assert np.array_equal(out, img) or np.array_equal(out, img[:, ::-1])
        out = V.adaface_view(img, np.random.default_rng(seed), 1.0)
        assert not (np.array_equal(out, img) or np.array_equal(out, img[:, ::-1]))


def test_adaface_view_without_its_crop_never_blacks_out_part_of_the_face():
    white = np.full((112, 112, 3), 255, np.uint8)  # rescale and colour jitter (>= 0.5) keep white above 127
    cropped = [V.adaface_view(white, np.random.default_rng(s), 1.0).min() for s in range(20)]
    uncropped = [V.adaface_view(white, np.random.default_rng(s), 1.0, crop=False).min() for s in range(20)]
    assert sum(m < 100 for m in cropped) >= 18 and min(uncropped) > 100
    cfg = lh_cfg(adaface_p=1.0, adaface_crop=False)
    assert all(v.min() > 100 for v in V.make_views(white, np.random.default_rng(0), "adaface", cfg))


def test_resized_crop_box_follows_torchvision_sampling():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = V.resized_crop_box(rng, 112, 112, (0.8, 1.0))
        assert 0 <= top and top + h <= 112 and 0 <= left and left + w <= 112
        assert 0.8 * 112 * 112 * 0.95 <= h * w <= 112 * 112
        assert 3 / 4 - 0.03 <= w / h <= 4 / 3 + 0.03
    # impossible scale: all tries fail, fallback is the centre crop with the ratio clamped
    assert V.resized_crop_box(rng, 112, 112, (2.0, 3.0)) == (0, 0, 112, 112)
    assert V.resized_crop_box(rng, 100, 200, (2.0, 3.0)) == (0, 33, 100, 133)


def test_zero_pad_crop_keeps_the_box_in_place_and_blacks_out_the_rest():
    img = np.full((112, 112, 3), 77, np.uint8)
    rng, replay = np.random.default_rng(5), np.random.default_rng(5)
    out = V.zero_pad_crop(img, rng)
    top, left, h, w = V.resized_crop_box(replay, 112, 112, V.ADAFACE_CROP_SCALE)
    expected = np.zeros_like(img)
    expected[top : top + h, left : left + w] = 77
    np.testing.assert_array_equal(out, expected)


def test_photometric_adjustments_known_answers():
    grey = np.full((4, 4, 3), 100, np.uint8)
    np.testing.assert_array_equal(V.adjust_brightness(grey, 1.2), np.full_like(grey, 120))
    np.testing.assert_array_equal(V.adjust_brightness(grey, 3.0), np.full_like(grey, 255))
    halves = np.zeros((4, 4, 3), np.uint8)
    halves[:2] = 200  # greyscale mean 100
    out = V.adjust_contrast(halves, 0.5)  # 100 + 0.5 * (x - 100)
    assert out[0, 0].tolist() == [150] * 3 and out[3, 3].tolist() == [50] * 3
    # saturation 0 gives the greyscale image; ITU-R 601 weights on B, G, R
    blue = np.zeros((2, 2, 3), np.uint8)
    blue[..., 0] = 200
    np.testing.assert_array_equal(V.adjust_saturation(blue, 0.0), np.full_like(blue, round(0.114 * 200)))
    np.testing.assert_array_equal(V.adjust_saturation(grey, 1.7), grey)


def test_color_jitter_factors_stay_in_range():
    grey = np.full((8, 8, 3), 100, np.uint8)  # contrast and saturation leave a flat grey image alone
    values = {int(V.color_jitter(grey, np.random.default_rng(s), 0.2)[0, 0, 0]) for s in range(50)}
    assert min(values) >= 80 and max(values) <= 120 and len(values) > 10
