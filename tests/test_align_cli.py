"""``python -m qgface.align`` on a folder of real photos (tests/data/photos)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from qgface.align import main
from qgface.eval.align import ARCFACE_TEMPLATE, similarity_transform
from qgface.infer.align_folder import CSV_COLUMNS

PHOTOS = Path(__file__).parent / "data" / "photos"


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    shutil.copy(PHOTOS / "obama.jpg", src / "obama.jpg")
    (src / "people" / "biden").mkdir(parents=True)
    shutil.copy(PHOTOS / "biden.jpg", src / "people" / "biden" / "portrait.jpg")
    cv2.imwrite(str(src / "people" / "wall.png"), np.full((90, 120, 3), 200, np.uint8))
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    dst = tmp_path_factory.mktemp("dst")
    assert main([str(src), str(dst), "--all-faces", "--no-progress"]) == 0
    with open(dst / "landmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return src, dst, rows


def test_every_image_is_listed_and_faces_land_at_the_same_relative_path(aligned):
    src, dst, rows = aligned
    assert tuple(rows[0]) == CSV_COLUMNS
    by_path: dict[str, list[dict]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    assert sorted(by_path) == ["broken.jpg", "obama.jpg", "people/biden/portrait.jpg", "people/wall.png"]
    assert [(r["score"], r["status"]) for r in by_path["people/wall.png"]] == [("", "no_face")]
    assert [(r["score"], r["status"]) for r in by_path["broken.jpg"]] == [("", "unreadable")]
    biden = by_path["people/biden/portrait.jpg"]
    assert len(biden) == 1 and biden[0]["crop"] == "people/biden/portrait.jpg" and float(biden[0]["score"]) > 0.99
    obama = by_path["obama.jpg"]  # --all-faces: the largest keeps the name, the others get _1, _2, ...
    assert [r["crop"] for r in obama] == ["obama.jpg"] + [f"obama_{k}.jpg" for k in range(1, len(obama))]
    for row in rows:
        if row["crop"]:
            assert cv2.imread(str(dst / row["crop"])).shape == (112, 112, 3)
    assert not (dst / "people" / "wall.png").exists() and not (dst / "broken.jpg").exists()


def test_csv_landmarks_are_source_pixels_that_the_crop_puts_on_the_template(aligned):
    src, dst, rows = aligned
    row = next(r for r in rows if r["path"] == "people/biden/portrait.jpg")
    points = np.array([[float(row[f"x{k}"]), float(row[f"y{k}"])] for k in range(1, 6)])
    source = cv2.imread(str(src / row["path"]))
    assert np.all((points >= 0) & (points < source.shape[1::-1]))
    assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # image-left first
    matrix = similarity_transform(points, ARCFACE_TEMPLATE)
    expected = cv2.warpAffine(source, matrix, (112, 112))
    crop = cv2.imread(str(dst / row["crop"])).astype(int)
    assert np.abs(crop - expected).mean() < 3  # the crop is that warp (up to JPEG)


def test_largest_only_pass_through_and_the_summary(tmp_path, aligned, capsys):
    _, first, _ = aligned
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PHOTOS / "obama.jpg", src / "obama.jpg")
    shutil.copy(first / "people" / "biden" / "portrait.jpg", src / "already.jpg")  # a 112x112 aligned crop
    dst = tmp_path / "dst"
    assert main([str(src), str(dst), "--pass-aligned", "--no-progress"]) == 0
    assert "2 images: 1 faces aligned, 1 passed through, 0 without a face, 0 unreadable" in capsys.readouterr().out
    assert (dst / "already.jpg").read_bytes() == (src / "already.jpg").read_bytes()
    assert not (dst / "obama_1.jpg").exists()
    with open(dst / "landmarks.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert rows["already.jpg"]["status"] == "passed_through"
    assert float(rows["already.jpg"]["x1"]) == pytest.approx(ARCFACE_TEMPLATE[0, 0], abs=0.01)


def test_bad_input_gives_one_message(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "qgface.align", str(tmp_path / "empty"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"qgface.align: error: {tmp_path / 'empty'} holds no image files"
    assert main([str(tmp_path / "empty"), str(tmp_path / "o"), "--min-face-size", "6"]) == 1


@pytest.mark.slow
def test_parallel_workers_write_the_same_csv(aligned, tmp_path):
    src, dst, _ = aligned
    assert main([str(src), str(tmp_path / "par"), "--all-faces", "--workers", "2", "--no-progress"]) == 0
    assert (tmp_path / "par" / "landmarks.csv").read_text() == (dst / "landmarks.csv").read_text()
