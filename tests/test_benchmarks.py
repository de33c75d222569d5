"""Every benchmark end to end on tiny fixtures written in the real on-disk layouts.

Faces are replaced by identity patterns (a horizontally symmetric 4x4 grid of colours per identity,
plus noise and JPEG) and the backbone by a real tiny network that embeds an image as its 4x4 block
mean colours: so every protocol's answer is known by construction (100 % when the lists, labels,
pairs and templates are wired correctly). ``ir_tiny`` then checks the CLI on a real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from torch import nn

from qgface.config import load_config
from qgface.data.binfile import save_bin
from qgface.data.images import encode_jpeg
from qgface.eval.__main__ import main as eval_main
from qgface.eval.align import ARCFACE_TEMPLATE
from qgface.eval.benchmarks import BenchmarkError, make_benchmark
from qgface.eval.compress import open_source
from qgface.eval.embed import embed_benchmark
from qgface.models import build_backbone

HQ = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")


class BlockColourNet(nn.Module):
    """Embedding = the 4x4 block means of the image (48-d); flip-invariant on symmetric patterns."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.adaptive_avg_pool2d(x, 4).flatten(1)
        norm = f.norm(dim=1, keepdim=True)
        return f / norm, norm


def face(identity: int, rng: np.random.Generator) -> np.ndarray:
    palette = np.random.default_rng(1000 + identity).integers(0, 256, (4, 2, 3))
    grid = np.concatenate([palette, palette[:, ::-1]], axis=1).astype(np.float64)
    img = np.kron(grid, np.ones((28, 28, 1))) + rng.normal(0, 6, (112, 112, 3))
    return img.clip(0, 255).astype(np.uint8)


def write_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(img))


def make_bins(root: Path, rng: np.random.Generator, pairs: int = 20) -> None:
    for k, name in enumerate(HQ):
        images, issame = [], []
        for p in range(pairs):
            same = (p + k) % 2 == 0
            a = 100 * k + p
            images += [encode_jpeg(face(a, rng)), encode_jpeg(face(a if same else a + 50, rng))]
            issame.append(same)
        save_bin(root / f"{name}.bin", images, issame)


def make_tinyface(root: Path, rng: np.random.Generator) -> None:
    testing = root / "tinyface" / "Testing_Set"
    aligned = root / "aligned_pad_0.1_pad_high"
    probes, probe_ids, matches, match_ids = [], [], [], []
    for ident in range(1, 9):
        for n in range(2):
            probes.append(f"{ident}_{n}.jpg"), probe_ids.append(ident)
        matches.append(f"{ident}_{9}.jpg"), match_ids.append(ident)
    for folder, names in (("Probe", probes), ("Gallery_Match", matches)):
        for name in names:
            img = face(int(name.split("_")[0]), rng)
            write_jpeg(aligned / folder / name, img)
            write_jpeg(testing / folder / name, cv2.resize(img, (24, 24)))  # the original low-res copy
    for n in range(30):
        write_jpeg(aligned / "Gallery_Distractor" / f"distractor_{n:03d}.jpg", face(500 + n, rng))
    (aligned / "Gallery_Distractor" / "notes.txt").write_text("not an image")

    def cells(names):
        out = np.empty((len(names), 1), dtype=object)
        out[:, 0] = [np.array([n]) for n in names]
        return out

    testing.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(testing / "probe_img_ID_pairs.mat",
                     {"probe_set": cells(probes), "probe_ids": np.array(probe_ids, float)[:, None]})
    scipy.io.savemat(testing / "gallery_match_img_ID_pairs.mat",
                     {"gallery_set": cells(matches), "gallery_ids": np.array(match_ids, float)[:, None]})


def make_scface(root: Path, rng: np.random.Generator, subjects: int = 6, cameras: int = 8) -> None:
    aligned = root / "scface" / "aligned"
    names = []
    for subject in range(1, subjects + 1):
        names.append(f"{subject:03d}_frontal.jpg")
        write_jpeg(aligned / names[-1], face(subject, rng))
        for cam in range(1, cameras + 1):
            for d in (1, 2, 3):
                names.append(f"{subject:03d}_cam{cam}_{d}.jpg")
                # infrared cameras 6-8 get another identity's pattern: counting them would lower rank-1
                write_jpeg(aligned / names[-1], face(subject if cam <= 5 else subject % 6 + 1, rng))
    (root / "scface" / "all.txt").write_text("\n".join(names[::-1]) + "\n")


def make_ijb(root: Path, name: str, rng: np.random.Generator) -> None:
    base = root / name.upper()
    (base / "meta").mkdir(parents=True)
    lines_5pts, lines_tid, pairs = [], [], []
    image = 0
    for template in range(1, 13):
        ident = (template - 1) // 2  # templates 2i-1, 2i share identity i
        for media in range(2):
            for _ in range(1 + media):
                angle, scale = rng.uniform(-20, 20), rng.uniform(1.2, 2.0)
                a = np.deg2rad(angle)
                m = np.array([[scale * np.cos(a), -scale * np.sin(a), 40], [scale * np.sin(a), scale * np.cos(a), 30]])
                loose = cv2.warpAffine(face(ident, rng), m, (260, 280), flags=cv2.INTER_LINEAR)
                file = f"{image}.jpg"
                write_jpeg(base / "loose_crop" / file, loose)
                pts = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
                lines_5pts.append(" ".join([file, *(f"{v:.3f}" for v in pts.ravel()), "0.9"]))
                lines_tid.append(f"{file} {template} {100 * template + media}")
                image += 1
    for t1 in range(1, 13):
        for t2 in range(t1 + 1, 13):
            pairs.append(f"{t1} {t2} {int((t1 - 1) // 2 == (t2 - 1) // 2)}")
    (base / "meta" / f"{name}_name_5pts_score.txt").write_text("\n".join(lines_5pts) + "\n")
    (base / "meta" / f"{name}_face_tid_mid.txt").write_text("\n".join(lines_tid) + "\n")
    (base / "meta" / f"{name}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(0)
    make_bins(root, rng)
    make_tinyface(root, rng)
    make_scface(root, rng)
    make_ijb(root, "ijbb", rng)
    make_ijb(root, "ijbc", rng)
    return root


def run(name: str, root: Path, rec_dir: Path | None = None):
    bench = make_benchmark(name, root)
    source = bench if rec_dir is None else open_source(bench, rec_dir)[0]
    emb, norms = embed_benchmark(BlockColourNet(), bench, source, batch_size=16, num_workers=0)
    return bench, bench.evaluate(emb, norms)


def test_hq_perfect_on_separable_pairs(data_root):
    bench, out = run("hq", data_root)
    assert set(out.metrics) == {*HQ, *(f"{n}_std" for n in HQ), "hq_avg"}
    assert all(out.metrics[n] == 100.0 for n in HQ) and out.metrics["hq_avg"] == 100.0
    assert bench.sizes() == {"images": 200, **{f"{n}_pairs": 20 for n in HQ}}
    assert bench.image_names[40] == "cfp_fp.bin:0"


def test_hq_missing_bin_names_the_file(tmp_path):
    save_bin(tmp_path / "lfw.bin", [encode_jpeg(np.zeros((112, 112, 3), np.uint8))] * 2, [True])
    with pytest.raises(BenchmarkError, match="cfp_fp.bin"):
        make_benchmark("hq", tmp_path)


def test_crlfw_degrades_only_the_first_image(data_root):
    bench, out = run("crlfw", data_root)
    assert set(out.metrics) == {f"crlfw_{s}{x}" for s in (8, 12, 16, 20) for x in ("", "_std")}
    assert all(out.metrics[f"crlfw_{s}"] == 100.0 for s in (8, 12, 16, 20))
    items = bench.embed_items()
    assert items[:2] == [(1, None), (3, None)] and items[20] == (0, 8) and items[-1] == (38, 20)
    img = face(3, np.random.default_rng(0))
    small = bench.transform(8, img)
    assert small.shape == img.shape and not np.array_equal(small, img)
    # the pixel noise (detail finer than 14 px) is gone: neighbouring pixels barely differ
    def roughness(x):
        return np.abs(np.diff(x.astype(int), axis=1)).mean()
    assert roughness(small) < 0.3 * roughness(img)


def test_tinyface_protocol_and_perfect_ranks(data_root):
    bench, out = run("tinyface", data_root)
    assert out.metrics == {"tinyface_rank1": 100.0, "tinyface_rank5": 100.0, "tinyface_rank20": 100.0}
    assert bench.sizes() == {"images": 54, "probes": 16, "gallery": 38, "gallery_match": 8, "distractors": 30}
    assert bench.image_names[0] == "Probe/1_0.jpg" and bench.image_names[16] == "Gallery_Match/1_9.jpg"
    assert bench.image_names[24:] == [f"Gallery_Distractor/distractor_{n:03d}.jpg" for n in range(30)]
    assert list(bench.labels[:4]) == [1, 1, 2, 2] and (bench.labels[24:] == -1).all()
    assert out.curves["cmc"]["rank"][:3] == [1, 2, 3]


def test_scface_excludes_infrared_and_splits_distances(data_root):
    bench, out = run("scface", data_root)
    assert out.metrics == {"scface_d1": 100.0, "scface_d2": 100.0, "scface_d3": 100.0}
    assert bench.sizes() == {"images": 6 + 6 * 5 * 3, "gallery": 6, "probes_d1": 30, "probes_d2": 30, "probes_d3": 30}
    assert bench.image_names == sorted(bench.image_names)
    assert not any(f"_cam{c}_" in n for n in bench.image_names for c in (6, 7, 8))


def test_scface_rejects_unknown_names(tmp_path):
    (tmp_path / "scface").mkdir()
    (tmp_path / "scface" / "all.txt").write_text("001_frontal.jpg\nsomething_else.jpg\n")
    with pytest.raises(BenchmarkError, match="something_else.jpg"):
        make_benchmark("scface", tmp_path)


@pytest.mark.parametrize("name", ["ijbb", "ijbc"])
def test_ijb_aligns_pools_templates_and_scores_pairs(data_root, name, tmp_path):
    bench, out = run(name, data_root)
    assert set(out.metrics) == {f"{name}_tar_at_1e-{k}" for k in range(1, 7)}
    assert all(v == 100.0 for v in out.metrics.values())
    assert bench.sizes() == {"images": 36, "templates": 12, "medias": 24, "pairs": 66}
    # the aligned crop reproduces the identity pattern (alignment inverts the known warp)
    aligned = cv2.imdecode(np.frombuffer(bench.load_bytes(0), np.uint8), cv2.IMREAD_COLOR)
    truth = face(0, np.random.default_rng(0)).astype(int)
    assert np.abs(aligned[10:100, 10:100].astype(int) - truth[10:100, 10:100]).mean() < 12
    # from the compressed .rec: the same numbers
    _, from_rec = run(name, data_root, tmp_path)
    assert from_rec.metrics == out.metrics


def test_ijb_template_pooling_is_media_mean_then_sum():
    from qgface.eval.benchmarks.ijb import template_features

    feats = np.array([[1.0, 0], [3.0, 0], [0, 1.0], [5.0, 5.0]])
    # template 7: media 1 = rows 0,1 (mean [2, 0]), media 2 = row 2 ([0, 1]) -> [2, 1]; template 9: row 3
    ids, t = template_features(feats, np.array([7, 7, 7, 9]), np.array([1, 1, 2, 1]), np.array([1.0, 1, 1, 2]))
    assert list(ids) == [7, 9]
    np.testing.assert_allclose(t, [[2 / 5 ** 0.5, 1 / 5 ** 0.5], [2 ** -0.5, 2 ** -0.5]])


def test_ijb_rejects_inconsistent_meta(tmp_path):
    base = tmp_path / "IJBB" / "meta"
    base.mkdir(parents=True)
    (base / "ijbb_name_5pts_score.txt").write_text("a.jpg " + "1 " * 10 + "0.9\n")
    (base / "ijbb_face_tid_mid.txt").write_text("b.jpg 1 1\n")
    with pytest.raises(BenchmarkError, match="same images in the same order"):
        make_benchmark("ijbb", tmp_path)


def test_cli_writes_json_with_a_real_checkpoint(tmp_path, capsys):
    data_root = tmp_path / "data"
    make_scface(data_root, np.random.default_rng(0), subjects=2, cameras=1)  # 8 images: ir_tiny is slow on CPU
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"format_version": 1, "backbone": "ir_tiny", "model": build_backbone("ir_tiny").state_dict(),
                "step": 123, "epoch": 2}, ckpt)
    (run_dir / "config.yaml").write_text(
        f"eval:\n  data_root: {data_root}\n  rec_dir: {tmp_path / 'rec'}\n  num_workers: 0\n  batch_size: 8\n")
    assert eval_main(["--checkpoint", str(ckpt), "--benchmark", "scface"]) == 0
    result = json.loads((run_dir / "eval" / "last" / "scface.json").read_text())
    assert result["status"] == "ok" and result["step"] == 123 and result["benchmark"] == "scface"
    assert set(result["metrics"]) == {"scface_d1", "scface_d2", "scface_d3"}
    assert all(0 <= v <= 100 for v in result["metrics"].values())
    assert result["sizes"]["gallery"] == 2 and result["source"].endswith("scface.rec")
    assert result["data_root"] == str(data_root.resolve()) and "embed_s" in result["timings"]
    # a missing data root fails with one message and a failure record
    assert eval_main(["--checkpoint", str(ckpt), "--benchmark", "hq", f"eval.data_root={tmp_path / 'nope'}"]) == 1
    assert "lfw.bin" in capsys.readouterr().err
    assert json.loads((run_dir / "eval" / "last" / "hq.json").read_text())["status"] == "failed"


def test_config_resolution_prefers_the_run_config(tmp_path):
    from qgface.eval.run import resolve_config

    ckpt = tmp_path / "elsewhere.pt"
    torch.save({"format_version": 1, "backbone": "ir_tiny", "model": {"w": torch.zeros(1)}, "step": 1,
                "config": load_config(None, ["eval.batch_size=7"]).to_dict()}, ckpt)
    assert resolve_config(ckpt).eval.batch_size == 7  # the checkpoint's own config
    assert resolve_config(ckpt, None, ["eval.batch_size=9"]).eval.batch_size == 9


def test_ijb_pair_scores_equal_direct_dot_products():
    from qgface.eval.benchmarks.ijb import pair_scores
    from qgface.eval.metrics import l2_normalize

    rng = np.random.default_rng(3)
    feats = l2_normalize(rng.normal(size=(50, 16)))
    first, second = rng.integers(0, 50, 3000), rng.integers(0, 50, 3000)
    direct = np.einsum("ij,ij->i", feats[first], feats[second])
    for block_bytes in (1, 4 * 50 * 7, 1 << 28):  # one row per block, 7 rows, everything at once
        np.testing.assert_allclose(pair_scores(feats, first, second, block_bytes), direct, atol=1e-6)


def test_flip_fusion_is_norm_weighted_and_keeps_the_fused_norm():
    from qgface.eval.embed import fused_embedding

    torch.manual_seed(0)
    x = torch.randn(3, 3, 112, 112)
    emb, norm = fused_embedding(BlockColourNet(), x)
    raw = F.adaptive_avg_pool2d(x, 4).flatten(1) + F.adaptive_avg_pool2d(x.flip(3), 4).flatten(1)  # e*n + e_f*n_f
    torch.testing.assert_close(norm[:, 0], raw.norm(dim=1))
    torch.testing.assert_close(emb, raw / raw.norm(dim=1, keepdim=True))
