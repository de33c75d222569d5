"""MTCNN with its published weights on real photos (tests/data/photos, see PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from qgface.detect import MTCNN, DetectorWeightsError, find_mtcnn_weights, nms
from qgface.detect.nets import ONet, RNet, _to_chw_columns, load_mtcnn_net
from qgface.eval.align import ARCFACE_TEMPLATE, align_face, similarity_transform

PHOTOS = Path(__file__).parent / "data" / "photos"
NAMES = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg")


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def detections(detector):
    return {name: detector.detect(cv2.imread(str(PHOTOS / name))) for name in NAMES}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", NAMES)
def test_one_confident_face_whose_box_agrees_with_opencvs_haar_detector(detections, name):
    image = cv2.imread(str(PHOTOS / name))
    faces = detections[name]
    confident = [f for f in faces if f.score > 0.95]
    assert len(confident) == 1, [(f.box.round(), f.score) for f in faces]
    face = faces[0]  # largest first
    assert face is confident[0]
    x1, y1, x2, y2 = face.box
    assert -5 <= x1 < x2 <= image.shape[1] + 5 and -5 <= y1 < y2 <= image.shape[0] + 5
    # an independent detector (OpenCV's Viola-Jones cascade) must find a face where MTCNN's box is
    haar = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = haar.detectMultiScale(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(40, 40))
    assert max(_iou(face.box, (x, y, x + w, y + h)) for x, y, w, h in found) > 0.5


@pytest.mark.parametrize("name", NAMES)
def test_landmarks_are_in_arcface_order_with_face_geometry(detections, name):
    face = detections[name][0]
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
    assert lex < nx < rex and lmx < rmx  # the image's left eye/mouth corner first
    assert max(ley, rey) < ny < min(lmy, rmy)  # eyes above the nose above the mouth
    x1, y1, x2, y2 = face.box
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
    interocular = np.hypot(rex - lex, rey - ley)
    assert 0.25 < interocular / (x2 - x1) < 0.65


def test_a_mirrored_photo_gives_mirrored_landmarks_with_sides_swapped(detector, detections):
    image = cv2.imread(str(PHOTOS / "obama.jpg"))
    width = image.shape[1]
    mirrored = detector.detect(np.ascontiguousarray(image[:, ::-1]))[0]
    expected = detections["obama.jpg"][0].landmarks.copy()
    expected[:, 0] = width - 1 - expected[:, 0]
    expected = expected[[1, 0, 2, 4, 3]]  # the eye on the image's left is now the other one
    interocular = np.linalg.norm(expected[1] - expected[0])
    assert np.abs(mirrored.landmarks - expected).max() < 0.08 * interocular


@pytest.mark.parametrize("name", ["obama2.jpg", "biden.jpg"])
def test_aligned_crop_puts_the_detected_face_on_the_template(detector, detections, name):
    image = cv2.imread(str(PHOTOS / name))
    landmarks = detections[name][0].landmarks
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    warped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(warped[:2] - ARCFACE_TEMPLATE[:2]).max() < 4.0  # eyes near the template's eye points
    crop = align_face(image, landmarks)
    assert crop.shape == (112, 112, 3)
    # detecting again in the crop finds the eyes where the template puts them
    again = detector.detect(crop)
    assert again and np.abs(again[0].landmarks[:2] - ARCFACE_TEMPLATE[:2]).max() < 5.0


def test_upsampling_finds_a_face_too_small_for_the_plain_pyramid(detector, detections):
    image = cv2.imread(str(PHOTOS / "obama3.jpg"))  # face ~72 px wide
    small = cv2.resize(image, None, fx=0.1, fy=0.1, interpolation=cv2.INTER_AREA)  # face ~9 px
    assert detector.detect(small) == []
    tiny = MTCNN(min_face_size=24).detect(small, upsample=4)  # 24 px upsampled = 6 source px
    assert tiny and tiny[0].score > 0.9
    expected = detections["obama3.jpg"][0].landmarks * 0.1
    assert np.abs(tiny[0].landmarks - expected).max() < 1.0  # within a pixel, on a 9 px face


def test_no_face_in_a_flat_image(detector):
    assert detector.detect(np.full((120, 160, 3), 127, np.uint8)) == []


def test_nms_by_hand():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 4, 4]], dtype=float)
    scores = np.array([0.9, 0.95, 0.5, 0.8])
    # box 1 (best) overlaps box 0 by 81/119 > 0.5: suppressed; box 3 overlaps box 1 by 16/109 < 0.5
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    # overlap over the smaller box: box 3 lies 16/25 inside box 1
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [1, 2]


def test_dense_layout_conversion_matches_width_height_channel_flattening():
    torch.manual_seed(0)
    features = torch.randn(2, 4, 3, 3)  # (channels, height, width) = (4, 3, 3)
    published = torch.randn(5, 36)  # expects the (w, h, c) flattening of the features
    reference = features.permute(0, 3, 2, 1).flatten(1) @ published.T
    converted = _to_chw_columns(published, (4, 3, 3))
    torch.testing.assert_close(features.flatten(1) @ converted.T, reference)


def test_weights_load_strictly_and_a_wrong_file_is_named(tmp_path):
    folder = find_mtcnn_weights()
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        assert (folder / name).is_file()
    with pytest.raises(DetectorWeightsError, match="lacks pnet.pt"):
        find_mtcnn_weights(tmp_path)
    torch.save(RNet().state_dict(), tmp_path / "onet.pt")
    with pytest.raises(DetectorWeightsError, match=r"onet\.pt.*expected the keys"):
        load_mtcnn_net(ONet(), tmp_path / "onet.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorWeightsError, match="junk.pt"):
        load_mtcnn_net(ONet(), tmp_path / "junk.pt")
