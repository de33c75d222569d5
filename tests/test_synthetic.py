"""The synthetic mixed-quality dataset: reproducible, in the real on-disk layouts, and degraded where it should be."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from qgface.config import from_dict
from qgface.data.binfile import load_bin
from qgface.data.images import decode_bgr
from qgface.data.insightface_rec import read_insightface_header
from qgface.data.irheader import unpack
from qgface.data.recordio import RecordIOReader
from qgface.data.synthetic import HQ_SETS, camera, ensure_synthetic, generate, synthetic_name
from qgface.data.synthetic.faces import TEMPLATE, make_identity
from qgface.eval.align import ARCFACE_TEMPLATE

SMALL = dict(
    identities=4,
    images_per_identity=3,
    eval_identities=5,
    hq_pairs=6,
    tinyface_probes=2,
    tinyface_gallery=1,
    tinyface_distractors=4,
    scface_subjects=3,
    ijb_templates=2,
    ijb_media=2,
    ijb_frames=2,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "set"
    generate(out, seed=0, workers=1, **SMALL)
    return out


def test_same_seed_same_bytes_in_parallel_and_other_seed_differs(small_set, tmp_path):
    generate(tmp_path / "again", seed=0, workers=2, **SMALL)
    first, again = _files(small_set), _files(tmp_path / "again")
    assert list(first) == list(again)
    assert [k for k in first if first[k] != again[k]] == []
    generate(tmp_path / "other", seed=1, workers=1, **SMALL)
    other = _files(tmp_path / "other")
    for name in ["train.rec", "lfw.bin", "IJBB/loose_crop/1.jpg", "scface/aligned/001_frontal.jpg"]:
        assert other[name] != first[name], name


def test_refuses_a_non_empty_folder(small_set):
    with pytest.raises(FileExistsError, match="not empty"):
        generate(small_set, **SMALL)


def test_training_rec_has_insightface_layout(small_set):
    reader = RecordIOReader(small_set / "train.rec", small_set / "train.idx")
    first, end = read_insightface_header(reader)
    assert (first, end) == (1, 1 + 4 * 3)
    labels = []
    for key in range(first, end):
        header, payload = unpack(reader.read(key))
        labels.append(int(np.ravel(header.label)[0]))
        assert decode_bgr(payload).shape == (112, 112, 3)
    assert labels == [n for n in range(4) for _ in range(3)]
    for n in range(4):  # identity records after the images: [first, end) of each identity's images
        header, _ = unpack(reader.read(end + n))
        assert [int(v) for v in header.label] == [1 + 3 * n, 4 + 3 * n]


def test_hq_verification_bins(small_set):
    for name in HQ_SETS:
        images, issame = load_bin(small_set / f"{name}.bin")
        assert len(images) == 2 * len(issame) == 12
        assert issame.mean() == 0.5
        assert all(decode_bgr(b).shape == (112, 112, 3) for b in images)
    images, issame = load_bin(small_set / "lfw.bin")
    faces = [decode_bgr(b)[30:100, 25:87].astype(np.float32) for b in images]
    faces = [(f - f.mean()) / f.std() for f in faces]  # illumination varies: compare normalised face centres
    diffs = [np.abs(faces[2 * i] - faces[2 * i + 1]).mean() for i in range(len(issame))]
    assert np.mean([d for d, s in zip(diffs, issame) if s]) < np.mean([d for d, s in zip(diffs, issame) if not s])


def test_tinyface_layout_and_protocol_files(small_set):
    root, aligned = small_set / "tinyface" / "Testing_Set", small_set / "aligned_pad_0.1_pad_high"
    for mat, names_key, ids_key, folder, count in (
        ("probe_img_ID_pairs.mat", "probe_set", "probe_ids", "Probe", 5 * 2),
        ("gallery_match_img_ID_pairs.mat", "gallery_set", "gallery_ids", "Gallery_Match", 5 * 1),
    ):
        m = scipy.io.loadmat(root / mat)
        names = [str(m[names_key][i, 0][0]) for i in range(m[names_key].shape[0])]
        ids = m[ids_key]
        assert m[names_key].shape == (count, 1) and ids.shape == (count, 1)
        assert [int(v) for v in ids[:, 0]] == [int(n.split("_")[0]) for n in names]
        assert sorted(p.name for p in (root / folder).iterdir()) == sorted(names)
        assert sorted(p.name for p in (aligned / folder).iterdir()) == sorted(names)
        for name in names:
            small, big = _read(root / folder / name), _read(aligned / folder / name)
            assert big.shape == (112, 112, 3)
            assert max(small.shape[:2]) <= (24 if folder == "Probe" else 64)
    probe_ids = {int(n.split("_")[0]) for n in (p.name for p in (root / "Probe").iterdir())}
    distractors = sorted(p.name for p in (root / "Gallery_Distractor").iterdir())
    assert len(distractors) == 4 and not probe_ids & {int(n.split("_")[0]) for n in distractors}
    assert sorted(p.name for p in (aligned / "Gallery_Distractor").iterdir()) == distractors


def test_scface_layout(small_set):
    folder = small_set / "scface" / "aligned"
    on_disk = sorted(p.name for p in folder.iterdir())
    expected = [f"{n:03d}_cam{c}_{d}.jpg" for n in (1, 2, 3) for c in range(1, 9) for d in (1, 2, 3)]
    assert on_disk == sorted(expected + [f"{n:03d}_frontal.jpg" for n in (1, 2, 3)])
    # the distributed all.txt: every image, name without extension, then the 5 landmarks, tab-separated
    rows = [line.split("\t") for line in (small_set / "scface" / "all.txt").read_text().splitlines()]
    assert [r[0] + ".jpg" for r in rows] == on_disk and all(len(r) == 11 for r in rows)
    assert np.allclose(np.array(rows[0][1:], float).reshape(5, 2), ARCFACE_TEMPLATE, atol=0.01)
    for name in on_disk:
        img = _read(folder / name).astype(np.int32)
        assert img.shape == (112, 112, 3)
        spread = np.abs(img - img.mean(axis=2, keepdims=True)).mean()
        assert (spread < 4) == (int(name.split("_cam")[1][0]) >= 6 if "_cam" in name else False), name


def _detail(img: np.ndarray) -> float:
    """High-frequency energy: mean absolute Laplacian of the grey image."""
    return float(np.abs(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32), cv2.CV_32F)).mean())


def test_scface_far_probes_carry_less_detail(small_set):
    folder = small_set / "scface" / "aligned"
    detail = {
        d: np.mean([_detail(_read(folder / f"{n:03d}_cam{c}_{d}.jpg")) for n in (1, 2, 3) for c in range(1, 6)])
        for d in (1, 2, 3)
    }
    mugshots = np.mean([_detail(_read(folder / f"{n:03d}_frontal.jpg")) for n in (1, 2, 3)])
    assert detail[1] < detail[2] < detail[3] < mugshots


def test_ijb_meta_files(small_set):
    for which in ("IJBB", "IJBC"):
        meta, prefix = small_set / which / "meta", which.lower()
        faces = [line.split() for line in (meta / f"{prefix}_face_tid_mid.txt").read_text().splitlines()]
        assert all(len(f) == 3 and f[1].isdigit() and f[2].isdigit() for f in faces)
        names = [f[0] for f in faces]
        assert sorted(p.name for p in (small_set / which / "loose_crop").iterdir()) == sorted(names)
        templates = {int(f[1]) for f in faces}
        assert len(templates) == 5 * 2
        pairs = [
            tuple(map(int, line.split()))
            for line in (meta / f"{prefix}_template_pair_label.txt").read_text().splitlines()
        ]
        assert len(pairs) == 10 * 9 // 2 and {p[2] for p in pairs} == {0, 1}
        assert sum(p[2] for p in pairs) == 5  # one genuine pair per identity (2 templates each)
        assert {p[0] for p in pairs} | {p[1] for p in pairs} == templates
        points = {}
        for line in (meta / f"{prefix}_name_5pts_score.txt").read_text().splitlines():
            fields = line.split()
            assert len(fields) == 12
            points[fields[0]] = (np.array(fields[1:11], float).reshape(5, 2), float(fields[11]))
        assert sorted(points) == sorted(names)
        for name, (marks, score) in points.items():
            h, w = _read(small_set / which / "loose_crop" / name).shape[:2]
            assert 150 <= min(h, w) and max(h, w) <= 250 and 0 < score <= 1
            assert (marks >= 0).all() and (marks[:, 0] < w).all() and (marks[:, 1] < h).all()
            assert marks[0, 0] < marks[1, 0] and marks[3, 0] < marks[4, 0]  # left/right eye, left/right mouth
            assert marks[2, 1] > marks[:2, 1].max() and marks[3:, 1].min() > marks[2, 1] - 5


def test_ijb_1n_lists(small_set):
    """Each identity's first template is its one gallery template (first half in gallery 1, second half
    in gallery 2); its other templates are the probes; one CSV row per image, header first."""
    for which, galleries in (("IJBB", ("S1", "S2")), ("IJBC", ("G1", "G2"))):
        meta, prefix = small_set / which / "meta", which.lower()
        faces = [line.split() for line in (meta / f"{prefix}_face_tid_mid.txt").read_text().splitlines()]
        rows = {}
        for role in (*(f"gallery_{g}" for g in galleries), "probe_mixed"):
            lines = (meta / f"{prefix}_1N_{role}.csv").read_text().splitlines()
            assert lines[0] == "TEMPLATE_ID,SUBJECT_ID,FILENAME"
            rows[role] = [line.split(",") for line in lines[1:]]
        listed = sorted(r[2] for group in rows.values() for r in group)
        assert listed == sorted(f[0] for f in faces)  # every image once
        gallery = [{(int(r[0]), int(r[1])) for r in rows[f"gallery_{g}"]} for g in galleries]
        subjects = [s for g in gallery for _, s in g]
        assert len(subjects) == len(set(subjects)) == 5 and len(gallery[0]) == 3 and len(gallery[1]) == 2
        probes = {(int(r[0]), int(r[1])) for r in rows["probe_mixed"]}
        assert len(probes) == 5 and {s for _, s in probes} == set(subjects)


def test_synthetic_ijb_resolves_far_1e4():
    """The demo's 40 evaluation identities get 4 templates each: 160 x 159 / 2 - 240 genuine = 12,480
    impostor pairs >= 10,000, so TAR at FAR 1e-4 is resolvable; the default 100 identities keep 3."""
    from qgface.data.synthetic.dataset import _defaults, _resolve

    for identities, templates in ((40, 4), (100, 3), (5, 32)):
        p = _resolve({**_defaults(), "eval_identities": identities})
        assert p["ijb_templates"] == templates
        total = identities * templates
        assert total * (total - 1) // 2 - identities * templates * (templates - 1) // 2 >= 10_000


def test_landmarks_align_a_placed_face_back_to_the_clean_render():
    """Aligning a face placed at a random similarity with its reported 5 points gives the aligned render."""
    idn, other = make_identity(0, 7), make_identity(0, 8)
    var = dataclasses.replace(
        camera.sample_variation(np.random.default_rng(3)),
        align_noise=0.0,
        yaw=math.radians(12),
        roll=math.radians(20),
        noise=0.5,
    )
    angle, scale = var.roll, 1.6
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    frame = np.concatenate([rot, (np.array([110.0, 120.0]) - rot @ [55.5, 55.5])[:, None]], 1)
    crop, marks = camera.render(idn, var, frame, (220, 240))
    # a least-squares similarity on all five points (a huge RANSAC threshold keeps every point an inlier)
    matrix, _ = cv2.estimateAffinePartial2D(
        marks.astype(np.float32), TEMPLATE.astype(np.float32), ransacReprojThreshold=1000
    )
    aligned = cv2.warpAffine(crop, matrix, (112, 112), flags=cv2.INTER_LINEAR).astype(np.float32)
    clean = camera.render_aligned(idn, var).astype(np.float32)
    wrong = camera.render_aligned(other, var).astype(np.float32)
    inner = (slice(30, 100), slice(25, 87))
    same, different = np.abs(aligned - clean)[inner].mean(), np.abs(aligned - wrong)[inner].mean()
    assert same < 4 and same < different / 5, (same, different)


def test_degrade_reduces_detail_more_at_lower_resolution():
    img = camera.render_aligned(make_identity(0, 1), camera.sample_variation(np.random.default_rng(0)))
    details = [
        np.mean([_detail(camera.degrade(img, px, np.random.default_rng(k))) for k in range(4)]) for px in (12, 24, 48)
    ]
    assert details[0] < details[1] < details[2] < _detail(img)
    small = camera.degrade(img, 16, np.random.default_rng(0), upscale=False)
    assert small.shape == (16, 16, 3)


def test_ensure_synthetic_generates_once_then_reuses(tmp_path):
    cfg = from_dict(
        {
            "data": {
                "synthetic_dir": str(tmp_path),
                "synthetic_identities": 3,
                "synthetic_images_per_identity": 2,
                "synthetic_eval_identities": 3,
                "synthetic_seed": 5,
            }
        }
    )
    name = synthetic_name(3, 2, 3, 5)
    (tmp_path / f".{name}.tmp-killed").mkdir()  # what a killed generation leaves behind
    (tmp_path / f".{name}.tmp-killed" / "train.rec").write_bytes(b"partial")
    root = ensure_synthetic(cfg)
    assert root == tmp_path / name and (root / "synthetic.json").exists()
    assert not list(tmp_path.glob(f".{name}.tmp-*"))
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert ensure_synthetic(cfg) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    (root / "synthetic.json").unlink()  # incomplete: regenerated
    assert ensure_synthetic(cfg) == root and (root / "synthetic.json").exists()
    load_bin(root / "lfw.bin")
