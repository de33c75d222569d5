"""ONNX export (tools/export_onnx.py), parity with onnxruntime on real and synthetic faces, and
``python -m qgface.eval --onnx``. Exporting takes ~10-40 s on a shared CPU: the module is slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from qgface.data.binfile import save_bin
from qgface.data.images import encode_jpeg, normalize_bgr
from qgface.data.synthetic.camera import render_aligned
from qgface.data.synthetic.faces import Variation, make_identity
from qgface.detect import MTCNN
from qgface.eval.__main__ import main as eval_main
from qgface.eval.align import align_face
from qgface.eval.benchmarks.hq import HQ_SETS
from qgface.infer.recognizer import Recognizer
from qgface.models import load_backbone
from qgface.models.iresnet import IResNet
from qgface.models.onnx_backbone import OnnxBackbone, OnnxModelError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PHOTOS = Path(__file__).parent / "data" / "photos"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(7)
    model = IResNet("ir_tiny")
    with torch.no_grad():  # BatchNorm statistics away from their defaults, so folding them is tested
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = root / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": model.state_dict(), "backbone": "ir_tiny", "step": 5}, checkpoint)
    onnx_path = root / "model.onnx"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export_onnx.py"), str(checkpoint), str(onnx_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {onnx_path}: max |embedding difference|" in result.stdout
    return checkpoint, onnx_path


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Five real aligned faces (the photos, detected and aligned) and six synthetic ones."""
    detector = MTCNN()
    real = []
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg"):
        photo = cv2.imread(str(PHOTOS / name))
        real.append(align_face(photo, detector.detect(photo)[0].landmarks))
    synthetic = [render_aligned(make_identity(3, k), Variation(yaw=0.1 * k)) for k in range(6)]
    return np.stack(real + synthetic)


def test_onnxruntime_matches_torch_on_real_and_synthetic_faces(exported, faces):
    checkpoint, onnx_path = exported
    model = load_backbone(checkpoint)
    runner = OnnxBackbone(onnx_path)
    x = torch.from_numpy(normalize_bgr(faces))
    with torch.no_grad():
        emb, norm = model(x)
    for batch in (x, x[:1], x[3:10]):  # the batch dimension is dynamic
        onnx_emb, onnx_norm = runner(batch)
        assert onnx_emb.shape == (len(batch), 512) and onnx_norm.shape == (len(batch), 1)
    onnx_emb, onnx_norm = runner(x)
    assert float((onnx_emb - emb).abs().max()) <= 1e-4
    assert float(((onnx_norm - norm).abs() / norm).max()) <= 1e-4
    # the flip-fused embeddings used by verification agree too
    torch_fused, torch_fused_norm = Recognizer(model, device="cpu").embed_aligned(faces)
    onnx_fused, onnx_fused_norm = Recognizer(runner, device="cpu").embed_aligned(faces)
    assert np.abs(onnx_fused - torch_fused).max() <= 1e-4
    np.testing.assert_allclose(onnx_fused_norm, torch_fused_norm, rtol=1e-4)


def test_eval_scores_the_onnx_model_like_its_checkpoint(exported, tmp_path):
    checkpoint, onnx_path = exported
    data = tmp_path / "eval"
    data.mkdir()
    for s, name in enumerate(
        HQ_SETS
    ):  # 10 pairs per set (one per fold): genuine = two renders of one synthetic identity
        images, issame = [], []
        for k in range(10):
            first = make_identity(10 + s, k)
            second = first if k % 2 == 0 else make_identity(10 + s, k + 100)
            images += [
                encode_jpeg(render_aligned(first, Variation())),
                encode_jpeg(render_aligned(second, Variation(yaw=0.15, smile=0.5))),
            ]
            issame.append(k % 2 == 0)
        save_bin(data / f"{name}.bin", images, issame)
    results = {}
    for flag, path in (("--checkpoint", checkpoint), ("--onnx", onnx_path)):
        out = tmp_path / flag.strip("-")
        assert (
            eval_main(
                [
                    flag,
                    str(path),
                    "--benchmark",
                    "hq",
                    "--output-dir",
                    str(out),
                    "--no-compress",
                    f"eval.data_root={data}",
                    "eval.num_workers=0",
                ]
            )
            == 0
        )
        results[flag] = json.loads((out / Path(path).stem / "hq.json").read_text())
    assert results["--onnx"]["status"] == "ok" and results["--onnx"]["checkpoint"] == str(onnx_path.resolve())
    assert results["--onnx"]["metrics"].keys() == results["--checkpoint"]["metrics"].keys()
    for key, value in results["--checkpoint"]["metrics"].items():
        assert results["--onnx"]["metrics"][key] == pytest.approx(value, abs=1e-9), key


def test_a_file_that_is_not_the_exported_backbone_is_refused(tmp_path, exported):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    with pytest.raises(OnnxModelError, match="junk.onnx"):
        OnnxBackbone(tmp_path / "junk.onnx")
    with pytest.raises(OnnxModelError, match="does not exist"):
        OnnxBackbone(tmp_path / "missing.onnx")
