"""Recognizer API and ``python -m qgface.embed|verify|search`` on real photos (tests/data/photos).

The backbone is an untrained ``ir_tiny`` with fixed random weights: the expected numbers are derived
from it independently (its flip-fused embedding of the aligned crop, by construction), not from
what a trained model would say.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from qgface import embed as embed_cli
from qgface import search as search_cli
from qgface import verify as verify_cli
from qgface.data.binfile import save_bin
from qgface.data.images import encode_jpeg
from qgface.detect import MTCNN
from qgface.eval.align import align_face
from qgface.infer.folder import load_embeddings
from qgface.infer.recognizer import NoFaceError, Recognizer
from qgface.models.iresnet import IResNet

PHOTOS = Path(__file__).parent / "data" / "photos"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(16)
    model = IResNet("ir_tiny")
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is really exercised
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save({"model": model.state_dict(), "backbone": "ir_tiny"}, path)
    return path


@pytest.fixture(scope="module")
def recognizer(checkpoint) -> Recognizer:
    return Recognizer.from_checkpoint(checkpoint, device="cpu", batch_size=2)


def _reference_embedding(checkpoint: Path, crop: np.ndarray) -> tuple[np.ndarray, float]:
    """The flip-fused embedding of docs/method.md §7, written out from its definition."""
    model = IResNet("ir_tiny")
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    x = torch.from_numpy(crop.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)[None]
    with torch.no_grad():
        e, n = model(x)
        ef, nf = model(torch.flip(x, dims=[3]))
    fused = (e * n + ef * nf)[0].numpy().astype(np.float64)
    return fused / np.linalg.norm(fused), float(np.linalg.norm(fused))


def test_embed_raw_photo_is_the_fused_embedding_of_its_aligned_largest_face(recognizer, checkpoint):
    photo = cv2.imread(str(PHOTOS / "biden.jpg"))
    face = MTCNN().detect(photo)[0]
    crop = align_face(photo, face.landmarks)
    emb, norm = recognizer.embed(photo)
    expected, expected_norm = _reference_embedding(checkpoint, crop)
    assert emb.shape == (1, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], expected, atol=1e-5)
    assert norm[0] == pytest.approx(expected_norm, rel=1e-5)
    # an aligned crop is taken as it is; batching does not change the result
    emb2, norm2 = recognizer.embed([crop, crop[:, ::-1].copy(), crop])
    np.testing.assert_allclose(emb2[0], emb[0], atol=1e-6)
    np.testing.assert_allclose(emb2[2], emb[0], atol=1e-6)
    # the fused embedding is flip-invariant by construction
    np.testing.assert_allclose(emb2[1], emb[0], atol=1e-5)


def test_embed_refuses_what_it_cannot_use(recognizer):
    photo = cv2.imread(str(PHOTOS / "obama.jpg"))
    with pytest.raises(ValueError, match="not an aligned 112x112 face"):
        recognizer.embed(photo, detect=False)
    with pytest.raises(NoFaceError, match="image 1"):
        recognizer.embed([photo, np.full((200, 200, 3), 90, np.uint8)])


@pytest.fixture(scope="module")
def crops(recognizer, tmp_path_factory) -> dict[str, Path]:
    """The aligned largest face of each photo, saved losslessly (PNG): embeds exactly as the photo does."""
    root = tmp_path_factory.mktemp("crops")
    paths = {}
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg"):
        paths[name] = root / name.replace(".jpg", ".png")
        cv2.imwrite(str(paths[name]), recognizer.align(cv2.imread(str(PHOTOS / name))))
    return paths


@pytest.fixture(scope="module")
def gallery(crops, tmp_path_factory) -> Path:
    """Identity folders: aligned crops, one raw photo and one image without a face."""
    root = tmp_path_factory.mktemp("gallery")
    for identity, names in {"obama": ["obama.jpg", "obama2.jpg"], "collins": ["astronaut.jpg"]}.items():
        (root / identity).mkdir()
        for name in names:
            shutil.copy(crops[name], root / identity / crops[name].name)
    (root / "biden").mkdir()
    shutil.copy(PHOTOS / "biden.jpg", root / "biden" / "biden.jpg")
    cv2.imwrite(str(root / "biden" / "empty.png"), np.full((64, 64, 3), 40, np.uint8))
    return root


@pytest.mark.slow
def test_embed_cli_writes_arrays_and_an_index_of_every_image(checkpoint, recognizer, gallery, tmp_path, capsys):
    out = tmp_path / "emb"
    assert embed_cli.main(["--checkpoint", str(checkpoint), "--detect", "--no-progress", str(gallery), str(out)]) == 0
    assert "embedded 4 images (1 without a face)" in capsys.readouterr().out
    with open(out / "index.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert rows["biden/empty.png"]["row"] == "" and rows["biden/empty.png"]["status"] == "no_face"
    saved = load_embeddings(out)
    emb, norm = recognizer.embed(cv2.imread(str(gallery / "biden" / "biden.jpg")))
    k = int(rows["biden/biden.jpg"]["row"])
    np.testing.assert_allclose(saved.embeddings[k], emb[0], atol=1e-5)
    assert saved.norms[k] == pytest.approx(norm[0], rel=1e-5)
    # without --detect raw photos are refused with the file named
    assert embed_cli.main(["--checkpoint", str(checkpoint), "--no-progress", str(gallery), str(tmp_path / "x")]) == 1
    assert "biden/biden.jpg: image is 282x640, not an aligned 112x112 face" in capsys.readouterr().err


def test_verify_prints_the_cosine_norms_and_the_decision(checkpoint, recognizer, crops, capsys):
    emb, norm = recognizer.embed([cv2.imread(str(crops["obama2.jpg"])), cv2.imread(str(crops["biden.jpg"]))])
    cosine = float(emb[0].astype(np.float64) @ emb[1])
    # raw photos (detected and aligned) and their aligned crops give the same answer
    for (a, b), threshold, decision in (
        ((PHOTOS / "obama2.jpg", PHOTOS / "biden.jpg"), cosine - 0.01, "same"),
        ((crops["obama2.jpg"], crops["biden.jpg"]), cosine + 0.01, "different"),
    ):
        assert verify_cli.main(["--checkpoint", str(checkpoint), str(a), str(b), "--threshold", str(threshold)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"similarity {cosine:.4f}"
        assert lines[1] == f"norm {norm[0]:.2f} {a}" and lines[2] == f"norm {norm[1]:.2f} {b}"
        assert lines[-1] == decision


def test_verify_learns_the_threshold_on_a_verification_bin(checkpoint, crops, tmp_path, capsys):
    # a small .bin: 10 genuine pairs (a crop and its slightly shifted copy) and 10 impostor pairs
    faces = [cv2.imread(str(path)) for path in crops.values()]
    rng = np.random.default_rng(0)
    images, issame = [], []
    for k in range(20):
        first = faces[k % 5]
        if k % 2 == 0:
            second = np.roll(first, int(rng.integers(1, 3)), axis=1)
        else:
            second = faces[(k + 1 + k // 5) % 5]
        images += [encode_jpeg(first), encode_jpeg(second)]
        issame.append(k % 2 == 0)
    save_bin(tmp_path / "pairs.bin", images, issame)
    a = crops["obama.jpg"]
    assert (
        verify_cli.main(
            ["--checkpoint", str(checkpoint), str(a), str(a), "--threshold-from", str(tmp_path / "pairs.bin")]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "similarity 1.0000"
    assert lines[-2].startswith("threshold ") and "10-fold threshold of pairs.bin" in lines[-2]
    assert lines[-1] == "same"


@pytest.mark.slow
def test_search_ranks_the_identity_holding_the_probe_first(checkpoint, gallery, tmp_path, capsys):
    probe = PHOTOS / "biden.jpg"  # the identity's only face: its template is the probe's embedding
    assert search_cli.main(["--checkpoint", str(checkpoint), str(probe), str(gallery), "-k", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert lines[0].split("\t")[:3] == ["1", "biden", "1.0000"]
    assert "1 gallery images without a face left out" in captured.err
    # the same search on a saved embedding folder gives the same answer
    out = tmp_path / "emb"
    assert embed_cli.main(["--checkpoint", str(checkpoint), "--detect", "--no-progress", str(gallery), str(out)]) == 0
    capsys.readouterr()
    assert search_cli.main(["--checkpoint", str(checkpoint), str(probe), str(out), "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_verify_names_the_image_without_a_face(checkpoint, crops, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((150, 150, 3), 30, np.uint8))
    assert verify_cli.main(["--checkpoint", str(checkpoint), str(crops["biden.jpg"]), str(blank)]) == 1
    assert (
        capsys.readouterr().err.strip() == f"qgface.verify: error: {blank}: no face found (try python -m "
        "qgface.align with --upsample for tiny faces)"
    )
