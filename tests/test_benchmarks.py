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
    scipy.io.savemat(
        testing / "probe_img_ID_pairs.mat",
        {"probe_set": cells(probes), "probe_ids": np.array(probe_ids, float)[:, None]},
    )
    scipy.io.savemat(
        testing / "gallery_match_img_ID_pairs.mat",
        {"gallery_set": cells(matches), "gallery_ids": np.array(match_ids, float)[:, None]},
    )


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
    # the distributed all.txt: name without extension, tab, landmark columns; every camera listed
    marks = "\t".join(f"{v:.3f}" for v in ARCFACE_TEMPLATE.ravel())
    (root / "scface" / "all.txt").write_text("".join(f"{n[:-4]}\t{marks}\n" for n in names[::-1]))


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
    # 1:N: template 2i-1 is identity i's gallery template (identities 0-2 in gallery 1, 3-5 in 2), 2i a probe
    first, second = ("S1", "S2") if name == "ijbb" else ("G1", "G2")
    rows = {first: [], second: [], "probe": []}
    for line in lines_tid:
        file, template, _ = line.split()
        ident = (int(template) - 1) // 2
        role = "probe" if int(template) % 2 == 0 else (first if ident < 3 else second)
        rows[role].append(f"{template},{ident},{file}")
    for role, lines in rows.items():
        csv_name = f"{name}_1N_probe_mixed.csv" if role == "probe" else f"{name}_1N_gallery_{role}.csv"
        (base / "meta" / csv_name).write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "\n".join(lines) + "\n")


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


def run(name: str, root: Path, rec_dir: Path | None = None, **options):
    bench = make_benchmark(name, root, **options)
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
    assert set(out.metrics) == {f"crlfw_{s}{x}" for s in (8, 12, 16, 20) for x in ("", "_std")} | {"crlfw_avg"}
    # the antialiasing triangle blurs across the 28-px colour blocks, so block means move: at 8/16/20 px
    # every pair stays separable, at 12 px one of the 20 pairs of this fixture crosses the threshold
    assert [out.metrics[f"crlfw_{s}"] for s in (8, 16, 20)] == [100.0] * 3 and out.metrics["crlfw_12"] >= 90.0
    assert out.metrics["crlfw_avg"] == pytest.approx(np.mean([out.metrics[f"crlfw_{s}"] for s in (8, 12, 16, 20)]))
    items = bench.embed_items()
    assert items[:2] == [(1, None), (3, None)] and items[20] == (0, 8) and items[-1] == (38, 20)
    img = face(3, np.random.default_rng(0))
    small = bench.transform(8, img)
    assert small.shape == img.shape and not np.array_equal(small, img)

    # the pixel noise (detail finer than 14 px) is gone: neighbouring pixels barely differ
    def roughness(x):
        return np.abs(np.diff(x.astype(int), axis=1)).mean()

    assert roughness(small) < 0.3 * roughness(img)


def _triangle_resize_axis(img: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Bilinear (triangle) resampling along one axis with Pillow's antialiasing rule, written from its
    definition: output pixel x has centre (x + 0.5) * in/out in input coordinates; the triangle is
    widened by max(in/out, 1), weights are normalised; the result is rounded to uint8."""
    size = img.shape[axis]
    scale = size / out
    width = max(scale, 1.0)
    weights = np.zeros((out, size))
    for x in range(out):
        centre = (x + 0.5) * scale
        lo, hi = max(int(centre - width + 0.5), 0), min(int(centre + width + 0.5), size)
        k = np.arange(lo, hi)
        w = np.clip(1 - np.abs((k + 0.5 - centre) / width), 0, None)
        weights[x, lo:hi] = w / w.sum()
    moved = np.moveaxis(img.astype(np.float64), axis, 0)
    result = np.tensordot(weights, moved, axes=(1, 0))
    return np.moveaxis(np.clip(np.round(result), 0, 255), 0, axis).astype(np.uint8)


def _reference_degrade(img: np.ndarray, size: int) -> np.ndarray:
    """The reference's Resize((size, size)) then Resize((112, 112)), horizontal pass first as Pillow."""
    small = _triangle_resize_axis(_triangle_resize_axis(img, size, 1), size, 0)
    return _triangle_resize_axis(_triangle_resize_axis(small, img.shape[1], 1), img.shape[0], 0)


@pytest.mark.parametrize("size", [8, 12, 16, 20])
def test_crlfw_degradation_matches_the_reference_within_one_level(size):
    from PIL import Image

    from qgface.eval.benchmarks.hq import degrade

    img = face(7, np.random.default_rng(size))
    got = degrade(img, size).astype(int)
    by_definition = _reference_degrade(img, size).astype(int)
    pil = Image.fromarray(img)
    direct = np.asarray(pil.resize((size, size), Image.BILINEAR).resize((112, 112), Image.BILINEAR)).astype(int)
    assert got.shape == img.shape
    assert np.abs(got - direct).max() == 0  # Pillow, called as torchvision's Resize calls it
    assert np.abs(got - by_definition).max() <= 1  # fixed-point rounding of Pillow
    # OpenCV's area filter gives other pixels: the test would catch a return to it
    area = cv2.resize(
        cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), (112, 112), interpolation=cv2.INTER_LINEAR
    ).astype(int)
    assert np.mean(np.abs(area - by_definition) > 1) > 0.2


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


def _scface_bench(tmp_path, listing: str):
    (tmp_path / "scface").mkdir()
    (tmp_path / "scface" / "all.txt").write_text(listing)
    return make_benchmark("scface", tmp_path)


def test_scface_reads_the_distributed_all_txt_and_skips_what_the_protocol_does_not_use(tmp_path):
    lines = [
        "001_frontal\t38.3\t51.7",
        "001_cam1_1\t38.3\t51.7",
        "001_cam5_2\t1\t2",
        "001_cam3_3\t1\t2",
        "001_cam6_1\t1\t2",
        "001_cam8_3\t1\t2",  # infrared: not in the protocol
        "001_cam1_4\t1\t2",
        "001_other\t1\t2",
        "",
    ]  # nothing the protocol knows
    bench = _scface_bench(tmp_path, "\n".join(lines))
    assert bench.image_names == ["001_cam1_1.jpg", "001_cam3_3.jpg", "001_cam5_2.jpg", "001_frontal.jpg"]
    assert list(bench.distance) == [1, 3, 2, 0] and list(bench.labels) == [1, 1, 1, 1]


def test_scface_reads_one_file_name_per_line_too(tmp_path):
    bench = _scface_bench(tmp_path, "002_frontal.jpg\n002_cam2_1.jpg\n002_cam2_2.jpg\n002_cam2_3.jpg\nnotes.jpg\n")
    assert bench.image_names == ["002_cam2_1.jpg", "002_cam2_2.jpg", "002_cam2_3.jpg", "002_frontal.jpg"]


def test_scface_without_a_distance_or_gallery_names_the_file(tmp_path):
    with pytest.raises(BenchmarkError, match=r"all.txt lists no visible-camera probe at distance 3"):
        _scface_bench(tmp_path, "001_frontal\t1\n001_cam1_1\t1\n001_cam1_2\t1\n001_cam6_3\t1\n")


@pytest.mark.parametrize("name", ["ijbb", "ijbc"])
def test_ijb_aligns_pools_templates_and_scores_pairs(data_root, name, tmp_path):
    bench, out = run(name, data_root, ijb_protocol="insightface")
    assert set(out.metrics) == {f"{name}_tar_at_1e-{k}" for k in range(1, 7)}
    # 60 impostor pairs resolve FAR 1e-1 only; the others are empty, not numbers
    assert out.metrics[f"{name}_tar_at_1e-1"] == 100.0
    assert all(out.metrics[f"{name}_tar_at_1e-{k}"] is None for k in range(2, 7))
    assert bench.sizes() == {"images": 36, "templates": 12, "medias": 24, "pairs": 66}
    # separable scores: the ROC is (0,0), (0,1), (1,1); at FAR 0.1 the qgface rule takes the lower of
    # the two equally near points (0,0) and (0,1), i.e. TAR 0, exactly as the reference computes it
    assert run(name, data_root)[1].metrics[f"{name}_tar_at_1e-1"] == 0.0
    # the image bytes are the distributed loose crop; aligned when read, it reproduces the identity
    # pattern (alignment inverts the known warp)
    raw = bench.load_bytes(0)
    assert raw == (data_root / name.upper() / "loose_crop" / "0.jpg").read_bytes()
    aligned = bench.transform(bench.embed_items()[0][1], cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR))
    truth = face(0, np.random.default_rng(0)).astype(int)
    assert aligned.shape == (112, 112, 3)
    assert np.abs(aligned[10:100, 10:100].astype(int) - truth[10:100, 10:100]).mean() < 12
    # from the compressed .rec: the same numbers
    _, from_rec = run(name, data_root, tmp_path, ijb_protocol="insightface")
    assert from_rec.metrics == out.metrics


def test_ijb_record_holds_the_distributed_bytes_landmarks_and_score(data_root, tmp_path):
    from qgface.data.irheader import unpack
    from qgface.data.recordio import RecordIOReader
    from qgface.eval.compress import compress_benchmark

    bench = make_benchmark("ijbc", data_root)
    rec = compress_benchmark(bench, tmp_path)
    reader = RecordIOReader(rec, rec.with_suffix(".idx"))
    for i in (0, 7, len(bench) - 1):
        header, payload = unpack(reader.read(i))
        assert payload == (data_root / "IJBC" / "loose_crop" / f"{i}.jpg").read_bytes()  # not re-encoded
        line = (data_root / "IJBC" / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()[i].split()
        assert header.flag == 11 and header.id == i
        np.testing.assert_allclose(header.label, np.array(line[1:], np.float32))
    loose = sum((data_root / "IJBC" / "loose_crop" / f"{i}.jpg").stat().st_size for i in range(len(bench)))
    assert loose < rec.stat().st_size < loose + 100 * len(bench)  # bytes + 24-byte header + 44-byte label + framing


def _reference_ijb_tars(bench, emb, weights, flip):
    """Template pooling and TAR@FAR re-derived as the reference scripts loop: per template, per media the
    mean of its (weighted) image features, summed, normalised; cosine pair scores; sklearn's ROC, then
    min over (|fpr - far|, index), on the flipped curve for InsightFace."""
    from sklearn.metrics import roc_curve

    feats = emb * weights[:, None]
    pooled = {}
    for t in np.unique(bench.templates):
        rows = np.flatnonzero(bench.templates == t)
        media = [feats[rows[bench.medias[rows] == m]].mean(0) for m in np.unique(bench.medias[rows])]
        total = np.sum(media, 0)
        pooled[t] = total / np.linalg.norm(total)
    pairs = np.loadtxt(bench.pair_file, dtype=int)
    scores = np.array([pooled[a] @ pooled[b] for a, b, _ in pairs])
    fpr, tpr, _ = roc_curve(pairs[:, 2], scores)
    if flip:
        fpr, tpr = fpr[::-1], tpr[::-1]
    return {far: tpr[min(zip(abs(fpr - far), range(len(fpr))))[1]] * 100 for far in (0.1, 0.2, 0.5)}


@pytest.mark.parametrize("protocol", ["qgface", "insightface"])
def test_ijb_protocols_pool_and_pick_points_as_their_references(data_root, protocol):
    from qgface.eval.benchmarks.ijb import pair_scores, template_features
    from qgface.eval.metrics import tar_at_far

    bench = make_benchmark("ijbb", data_root, ijb_protocol=protocol)
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(len(bench), 3)).round(1)  # coarse values: tied scores, so the rules differ
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    norms = rng.uniform(1, 30, len(bench))
    bench.scores = rng.uniform(0.3, 1.0, len(bench))
    weights = np.ones(len(bench)) if protocol == "qgface" else norms * bench.scores
    want = _reference_ijb_tars(bench, emb, weights, flip=protocol == "insightface")
    out = bench.evaluate(emb, norms)
    assert out.metrics["ijbb_tar_at_1e-1"] == pytest.approx(want[0.1])
    ids, feats = template_features(emb, bench.templates, bench.medias, None if protocol == "qgface" else weights)
    pairs = np.loadtxt(bench.pair_file, dtype=int)
    scores = pair_scores(feats, np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1]))
    got = tar_at_far(scores, pairs[:, 2], [0.2, 0.5], rule="lower" if protocol == "qgface" else "higher")
    assert got[0.2] * 100 == pytest.approx(want[0.2]) and got[0.5] * 100 == pytest.approx(want[0.5])


def test_ijb_protocol_config_key():
    from qgface.config import ConfigError

    assert load_config(None).eval.ijb_protocol == "qgface"
    assert load_config(None, ["eval.ijb_protocol=insightface"]).eval.ijb_protocol == "insightface"
    with pytest.raises(ConfigError, match="eval.ijb_protocol must be one of qgface, insightface"):
        load_config(None, ["eval.ijb_protocol=adaface"])


def test_ijb_protocol_is_recorded_and_validated(data_root):
    assert make_benchmark("ijbb", data_root).protocol == "qgface"
    assert make_benchmark("ijbb_1n", data_root, ijb_protocol="insightface").protocol == "insightface"
    with pytest.raises(ValueError, match="qgface, insightface"):
        make_benchmark("ijbb", data_root, ijb_protocol="adaface")


@pytest.mark.parametrize("name", ["ijbb_1n", "ijbc_1n"])
def test_ijb_1n_identification_on_separable_templates(data_root, name, tmp_path):
    bench, out = run(name, data_root, tmp_path)
    assert out.metrics == {
        f"{name}_rank1": 100.0,
        f"{name}_rank5": 100.0,
        f"{name}_tpir_at_fpir_1e-2": 100.0,
        f"{name}_tpir_at_fpir_1e-1": 100.0,
    }
    assert bench.sizes() == {"images": 36, "gallery_templates": 6, "probe_templates": 6}
    assert list(bench.gallery_templates) == [1, 3, 5, 7, 9, 11] and list(bench.probe_templates) == [2, 4, 6, 8, 10, 12]
    # it reads the 1:1 benchmark's compressed images
    assert (tmp_path / f"{name[:4]}.rec").is_file() and not (tmp_path / f"{name}.rec").exists()


def test_identification_metrics_by_hand():
    from qgface.eval.benchmarks.ijb_1n import identification_metrics

    # 4 probes x 3 gallery rows given directly as scores (gallery = identity, probe rows = scores)
    scores = np.array(
        [
            [0.9, 0.1, 0.2],  # mate 0: rank 1
            [0.8, 0.7, 0.0],  # mate 1: rank 2 (0.8 above)
            [0.3, 0.2, 0.6],  # mate 2: rank 1
            [0.5, 0.4, 0.45],
        ]
    )  # mate 0: rank 1
    mate = np.array([0, 1, 2, 0])
    rates, tpir = identification_metrics(scores, np.eye(3), mate, ranks=(1, 2), fpirs=(0.25, 0.5))
    assert rates == {1: 0.75, 2: 1.0}
    # non-mate scores, descending: 0.8, 0.45, 0.4, 0.3, 0.2, 0.2, 0.1, 0.0; FPIR 0.25 -> ceil(1)-th = 0.8:
    # mates above 0.8: 0.9 -> 1/4; FPIR 0.5 -> 2nd = 0.45: mates 0.9, 0.7, 0.6, 0.5 -> 4/4
    assert tpir == {0.25: 0.25, 0.5: 1.0}


def test_ijb_1n_needs_one_gallery_template_per_probe_subject(data_root, tmp_path):
    import shutil

    shutil.copytree(data_root / "IJBB", tmp_path / "IJBB")
    probe = tmp_path / "IJBB" / "meta" / "ijbb_1N_probe_mixed.csv"
    probe.write_text(probe.read_text() + "99,77,x.jpg\n")
    with pytest.raises(BenchmarkError, match="probe subject 77 has no gallery template"):
        make_benchmark("ijbb_1n", tmp_path)


def test_ijb_template_pooling_is_media_mean_then_sum():
    from qgface.eval.benchmarks.ijb import template_features

    feats = np.array([[1.0, 0], [3.0, 0], [0, 1.0], [5.0, 5.0]])
    # template 7: media 1 = rows 0,1 (mean [2, 0]), media 2 = row 2 ([0, 1]) -> [2, 1]; template 9: row 3
    ids, t = template_features(feats, np.array([7, 7, 7, 9]), np.array([1, 1, 2, 1]), np.array([1.0, 1, 1, 2]))
    assert list(ids) == [7, 9]
    np.testing.assert_allclose(t, [[2 / 5**0.5, 1 / 5**0.5], [2**-0.5, 2**-0.5]])


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
    torch.save(
        {
            "format_version": 1,
            "backbone": "ir_tiny",
            "model": build_backbone("ir_tiny").state_dict(),
            "step": 123,
            "epoch": 2,
        },
        ckpt,
    )
    (run_dir / "config.yaml").write_text(
        f"eval:\n  data_root: {data_root}\n  rec_dir: {tmp_path / 'rec'}\n  num_workers: 0\n  batch_size: 8\n"
    )
    assert eval_main(["--checkpoint", str(ckpt), "--benchmark", "scface"]) == 0
    result = json.loads((run_dir / "eval" / "last" / "scface.json").read_text())
    assert result["status"] == "ok" and result["step"] == 123 and result["benchmark"] == "scface"
    assert result["protocol"] is None  # only benchmarks with several conventions (IJB) name one
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
    torch.save(
        {
            "format_version": 1,
            "backbone": "ir_tiny",
            "model": {"w": torch.zeros(1)},
            "step": 1,
            "config": load_config(None, ["eval.batch_size=7"]).to_dict(),
        },
        ckpt,
    )
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
