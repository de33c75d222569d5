"""IJB-S (docs/method.md §7.7): the PFE identification rules on hand-built score matrices, and the
benchmark on the synthetic layout with features whose answers are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qgface.data.synthetic import generate
from qgface.eval.benchmarks import BenchmarkError, make_benchmark
from qgface.eval.benchmarks.ijbs import closed_set_rates, open_set_tpir, template_feature
from qgface.eval.compress import RecordSource, StaleRecError, check_rec, compress_benchmark


def test_closed_set_rank_counts_entries_scoring_at_least_the_mate():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # mate col 0 is top: rank 1
            [0.5, 0.6, 0.7, 0.4],  # mate col 0 beaten by 2: rank 3
            [0.2, 0.8, 0.1, 0.0],  # mate col 1 top: rank 1
            [0.0, 0.0, 0.0, 0.0],  # empty template, mate col 2 ties all: rank 4 (fails)
            [0.3, 0.2, 0.1, 0.5],
        ]
    )  # no mate: ignored in the closed set
    mate = np.array([0, 0, 1, 2, -1])
    rates = closed_set_rates(scores, mate, ranks=(1, 3, 4))
    assert rates == {1: 0.5, 3: 0.75, 4: 1.0}


def test_open_set_threshold_is_the_floor_kth_highest_non_mate_maximum():
    # 10 non-mated probes with maxima 1.0, 0.9, ..., 0.1; 3 mated probes
    nonmated = np.stack([np.array([m, 0.0]) for m in np.arange(10, 0, -1) / 10])
    mated = np.array(
        [
            [0.95, 0.2],  # top-1 and above every non-mate maximum but 1.0
            [0.85, 0.9],  # mate (col 0) not top-1: never counts
            [0.75, 0.1],
        ]
    )  # top-1, score 0.75
    scores = np.vstack([nonmated, mated])
    mate = np.array([-1] * 10 + [0, 0, 0])
    # FPIR 0.1: k = 1 -> threshold 1.0: nobody; 0.3: k = 3 -> 0.8: first; 0.5: k = 5 -> 0.6: first and third
    # FPIR 0.05: k = 0 -> threshold above the highest (1.0 + 1e-8): nobody
    tpir = open_set_tpir(scores, mate, fpirs=(0.05, 0.1, 0.3, 0.5))
    assert tpir == {0.05: 0.0, 0.1: 0.0, 0.3: pytest.approx(1 / 3), 0.5: pytest.approx(2 / 3)}
    # a score equal to the threshold is accepted (>=)
    assert open_set_tpir(np.vstack([nonmated, [[0.8, 0.0]]]), np.array([-1] * 10 + [0]), (0.3,)) == {0.3: 1.0}


def test_template_feature_is_the_normalised_mean_and_zero_when_empty():
    feats = np.array([[3.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(template_feature(feats), np.array([2.0, 1.0]) / np.sqrt(5), rtol=1e-7)
    assert not template_feature(np.zeros((0, 2))).any()


@pytest.fixture(scope="module")
def ijbs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ijbs") / "synthetic"
    generate(
        root,
        identities=2,
        images_per_identity=1,
        eval_identities=6,
        hq_pairs=2,
        tinyface_distractors=2,
        ijb_templates=3,
        workers=1,
    )
    return root


def _one_hot(bench, direction_of=None) -> tuple[np.ndarray, np.ndarray]:
    """Unit features pointing at their subject (or at ``direction_of(i, subject)``), norms 1..3."""
    feats = np.zeros((len(bench), 16))
    for i, subject in enumerate(bench.labels):
        feats[i, direction_of(i, subject) if direction_of else subject] = 1.0
    return feats, 1.0 + np.arange(len(bench)) % 3


def test_synthetic_layout_builds_the_protocol_templates(ijbs_root):
    bench = make_benchmark("ijbs", ijbs_root)
    # 6 subjects x (3 photos + 3 videos x 3 frames), one probe frame listed but not aligned
    assert len(bench) == 6 * 12 - 1
    assert bench.labels[0] == 1 and bench.image_names[0] == "1/img_100010.jpg"
    probes = bench.probes["video2image"]
    assert len(probes) == 12 and sorted(len(t.images) for t in probes) == [2] + [3] * 11
    assert [len(g) for g in bench.galleries["single"]] == [3, 3]
    assert [len(t.images) for t in bench.galleries["booking"][0]] == [3, 3, 3]
    assert [t.subject for t in bench.galleries["surveillance"][1]] == [4, 5, 6]
    assert bench.sizes()["images"] == 71


def test_perfect_features_give_100_everywhere(ijbs_root):
    bench = make_benchmark("ijbs", ijbs_root)
    metrics = bench.evaluate(*_one_hot(bench)).metrics
    assert len(metrics) == 15 and all(v == pytest.approx(100.0) for v in metrics.values())


def test_confused_probe_frames_lower_the_rates_by_construction(ijbs_root):
    bench = make_benchmark("ijbs", ijbs_root)

    # every probe-video frame of subject 1 looks like subject 4: its 2 of 12 probe templates miss at rank 1
    # (subject 4 ranks first), and rank 5 still finds the mate (score 0 ties the 4 other wrong subjects)
    def direction(i, subject):
        name = bench.image_names[i]
        return 4 if subject == 1 and "videos_20" in name else subject

    metrics = bench.evaluate(*_one_hot(bench, direction)).metrics
    for protocol in ("sur2single", "sur2book", "sur2sur"):
        assert metrics[f"ijbs_{protocol}_rank1"] == pytest.approx(100 * 10 / 12)
        assert metrics[f"ijbs_{protocol}_rank5"] == pytest.approx(100 * 10 / 12)  # ties count against it
        assert metrics[f"ijbs_{protocol}_rank10"] == pytest.approx(100.0)
        # gallery 1 (subjects 1-3): the 2 confused probes score 0 with their mate; gallery 2: their
        # probes become non-mates at 1.0, so the 1 % threshold (k = 0) lies above every mate score
        assert metrics[f"ijbs_{protocol}_tpir_at_fpir_1e-2"] == pytest.approx(100 * (4 / 6) / 2)


def test_compressed_records_hold_the_files_unchanged_and_refuse_a_changed_list(ijbs_root, tmp_path):
    bench = make_benchmark("ijbs", ijbs_root)
    rec = compress_benchmark(bench, tmp_path)
    source = RecordSource(rec)
    assert all(source.load_bytes(i) == bench.load_bytes(i) for i in range(len(bench)))
    bench.image_names = bench.image_names[::-1]
    with pytest.raises(StaleRecError, match="list_sha256"):
        check_rec(bench, tmp_path)


def _copy_protocols(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src / "IJBS", dst / "IJBS")
    return dst


def test_bad_protocol_files_name_the_file(ijbs_root, tmp_path):
    root = _copy_protocols(ijbs_root, tmp_path)
    gallery = root / "IJBS" / "protocols" / "galleries" / "cs6_surveillance_to_single_g1.csv"
    gallery.write_text(gallery.read_text() + "9,1,img/100011.jpg\n")
    bench = make_benchmark("ijbs", root)
    with pytest.raises(BenchmarkError, match="several templates"):
        bench.evaluate(*_one_hot(bench))
    listing = root / "IJBS" / "image_list_mtcnn_fail_skipped_v1.csv"
    original = listing.read_text()
    listing.write_text(original + "99,1/frame_3.jpg\n")
    with pytest.raises(BenchmarkError, match="image_list_mtcnn_fail_skipped_v1.csv.*frame_3"):
        make_benchmark("ijbs", root)
    listing.write_text(original)
    (root / "IJBS" / "protocols" / "cs6_metadata.csv").unlink()
    with pytest.raises(BenchmarkError, match="cs6_metadata.csv not found"):
        make_benchmark("ijbs", root)


def test_synthetic_surveillance_frames_carry_less_detail_than_the_photos(ijbs_root):
    import cv2

    bench = make_benchmark("ijbs", ijbs_root)

    def detail(kind: str) -> float:
        crops = [
            cv2.imdecode(np.frombuffer(bench.load_bytes(i), np.uint8), cv2.IMREAD_GRAYSCALE)
            for i, name in enumerate(bench.image_names)
            if f"/{kind}_" in name
        ]
        assert all(c.shape == (112, 112) for c in crops)
        return float(np.mean([cv2.Laplacian(c.astype(np.float64), cv2.CV_64F).var() for c in crops]))

    assert detail("videos") < 0.5 * detail("img")
