"""Metrics of docs/method.md §7 against slow obvious reimplementations and inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold

from qgface.eval.metrics import (
    VERIFICATION_THRESHOLDS,
    cmc,
    pair_distances,
    tar_at_far,
    verification_accuracy,
    verification_accuracy_from_distances,
)

# ---------------------------------------------------------------- slow references (loops, no tricks)


def slow_verification(dist, issame, folds=10):
    """InsightFace calculate_roc/calculate_accuracy written as plain loops."""
    thresholds = np.arange(0, 4, 0.01)
    accs, bests = [], []
    for train, test in KFold(n_splits=folds, shuffle=False).split(np.arange(len(dist))):
        train_acc = []
        for t in thresholds:
            correct = sum((dist[i] < t) == issame[i] for i in train)
            train_acc.append(correct / len(train))
        best = thresholds[int(np.argmax(train_acc))]
        accs.append(sum((dist[i] < best) == issame[i] for i in test) / len(test))
        bests.append(best)
    return np.array(accs), np.array(bests)


def slow_cmc(probe, gallery, probe_labels, gallery_labels, ranks):
    """Rank by walking the gallery sorted by score (descending, genuine before impostors on a tie)."""
    p = probe / np.linalg.norm(probe, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    found = []
    for i in range(len(p)):
        if probe_labels[i] == -1 or not np.any(gallery_labels == probe_labels[i]):
            continue
        scores = [float(np.dot(p[i].astype(np.float32), g[j].astype(np.float32))) for j in range(len(g))]
        genuine = [gallery_labels[j] == probe_labels[i] for j in range(len(g))]
        ordered = sorted(range(len(g)), key=lambda j: (-scores[j], not genuine[j]))
        found.append(next(pos for pos, j in enumerate(ordered) if genuine[j]) + 1)
    found = np.array(found)
    return np.array([np.mean(found <= r) for r in ranks])


def insightface_tar(scores, labels, far):
    """ijb_11.py: flip the ROC, take the first index of the smallest |fpr - far|."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, min_index = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[min_index]


def qgface_reference_tar(scores, labels, far):
    """The QGFace reference's validate_IJB_BC: the same min over (gap, index), on the unflipped ROC."""
    fpr, tpr, _ = roc_curve(labels, scores)
    _, min_index = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[min_index]


# ---------------------------------------------------------------- verification accuracy


@pytest.mark.parametrize("pairs", [60, 23, 200])
def test_verification_matches_slow_reference(pairs):
    rng = np.random.default_rng(pairs)
    issame = rng.random(pairs) < 0.5
    base = rng.normal(size=(pairs, 32))
    other = np.where(issame[:, None], base + 0.6 * rng.normal(size=(pairs, 32)), rng.normal(size=(pairs, 32)))
    emb = np.empty((2 * pairs, 32))
    emb[0::2], emb[1::2] = base * 3.0, other  # scale: normalisation happens inside
    acc, best = verification_accuracy(emb, issame)
    ref_acc, ref_best = slow_verification(pair_distances(emb), issame)
    np.testing.assert_array_equal(best, ref_best)
    np.testing.assert_allclose(acc, ref_acc, rtol=0, atol=1e-12)


def test_verification_separable_is_100_percent_with_first_best_threshold():
    pairs = 40
    issame = np.arange(pairs) % 2 == 0
    eye = np.eye(4)
    emb = np.empty((2 * pairs, 4))
    emb[0::2] = eye[0]
    emb[1::2] = np.where(issame[:, None], eye[0], eye[1])  # distance 0 (genuine) or 2 (impostor)
    acc, best = verification_accuracy(emb, issame)
    np.testing.assert_array_equal(acc, 1.0)
    # every threshold in (0, 2] is perfect: the first one, 0.01, is chosen
    np.testing.assert_array_equal(best, VERIFICATION_THRESHOLDS[1])


def test_verification_distance_equal_to_a_threshold_is_not_below_it():
    t = VERIFICATION_THRESHOLDS
    issame = np.arange(50) % 2 == 0
    dist = np.where(issame, t[50], t[100])  # genuine pairs sit exactly ON threshold 50
    acc, best = verification_accuracy_from_distances(dist, issame)
    # dist < t is strict: threshold 50 rejects the genuine pairs, 51 is the first perfect one
    np.testing.assert_array_equal(best, t[51])
    np.testing.assert_array_equal(acc, 1.0)
    ref_acc, ref_best = slow_verification(dist, issame)
    np.testing.assert_array_equal(best, ref_best)
    np.testing.assert_array_equal(acc, ref_acc)


def test_verification_all_wrong_side_gives_known_fold_accuracy():
    # genuine pairs far apart, impostors identical: the best rule is "never same" -> impostor share
    issame = np.array([True] * 3 + [False] * 7).repeat(10)
    dist = np.where(issame, 3.5, 0.0)
    acc, best = verification_accuracy_from_distances(dist, issame)
    np.testing.assert_array_equal(best, 0.0)  # dist < 0 never holds: everything predicted "different"
    ref, _ = slow_verification(dist, issame)
    np.testing.assert_allclose(acc, ref)
    assert acc.mean() == pytest.approx(0.7)


def test_verification_rejects_odd_embeddings():
    with pytest.raises(ValueError, match="consecutive pairs"):
        verification_accuracy(np.zeros((5, 4)), [True, False])


# ---------------------------------------------------------------- CMC


def test_cmc_matches_slow_reference_with_distractors_and_unmated_probes():
    rng = np.random.default_rng(1)
    ids = 30
    centres = rng.normal(size=(ids, 16))
    gallery = np.concatenate([centres, centres[:10] + 0.3 * rng.normal(size=(10, 16)), rng.normal(size=(40, 16))])
    gallery_labels = np.concatenate([np.arange(ids), np.arange(10), -np.ones(40, int)])
    probe_labels = np.concatenate([np.arange(ids + 5), [-1]])  # ids 30..34 and -1 have no mate
    probe = rng.normal(size=(len(probe_labels), 16))
    probe[:ids] = centres + 0.9 * rng.normal(size=(ids, 16))
    ranks = (1, 2, 5, 20)
    got = cmc(probe, gallery, probe_labels, gallery_labels, ranks)
    np.testing.assert_allclose(got, slow_cmc(probe, gallery, probe_labels, gallery_labels, ranks))
    for chunk in (1, 7):
        np.testing.assert_array_equal(cmc(probe, gallery, probe_labels, gallery_labels, ranks, chunk=chunk), got)
    assert 0 < got[0] < 1


def test_cmc_known_ranks_and_best_of_several_genuine():
    eye = np.eye(6)
    # gallery: identity 0 at e0 and at (e0+e1); identity 1 at e2; distractors e1 and (e0 + 0.5 e3)
    gallery = np.stack([eye[1] + eye[0] * 0.1, eye[0] + eye[1], eye[2], eye[1], eye[0] + 0.5 * eye[3]])
    gallery_labels = np.array([0, 0, 1, -1, -1])
    probe = np.stack([eye[1], eye[2]])
    # probe 0 = e1: distractor e1 scores 1.0, then its genuine (e0+e1) = 0.707, (0.1e0+e1) = 0.995:
    # best genuine 0.995 < 1.0 -> rank 2. probe 1 = e2 -> rank 1.
    got = cmc(probe, gallery, np.array([0, 1]), gallery_labels, ranks=(1, 2))
    np.testing.assert_array_equal(got, [0.5, 1.0])


def test_cmc_tie_with_impostor_counts_for_the_probe():
    eye = np.eye(3)
    gallery = np.stack([eye[0], eye[0], eye[1]])  # impostor (index 0) ties with the genuine (index 1)
    got = cmc(eye[:1], gallery, np.array([7]), np.array([3, 7, 5]), ranks=(1,))
    np.testing.assert_array_equal(got, [1.0])  # an argsort-in-index-order CMC would say rank 2
    np.testing.assert_allclose(got, slow_cmc(eye[:1], gallery, np.array([7]), np.array([3, 7, 5]), (1,)))


def test_cmc_without_any_mate_is_an_error():
    with pytest.raises(ValueError, match="no probe has a mate"):
        cmc(np.eye(2), np.eye(2), np.array([5, 6]), np.array([1, -1]))


# ---------------------------------------------------------------- TAR at FAR


@pytest.mark.parametrize("rule,reference", [("higher", insightface_tar), ("lower", qgface_reference_tar)])
def test_tar_at_far_matches_both_references(rule, reference):
    rng = np.random.default_rng(2)
    labels = rng.random(5000) < 0.3
    scores = np.where(labels, rng.normal(1.0, 1.0, 5000), rng.normal(-1.0, 1.0, 5000)).round(2)  # ties
    fars = [1e-3, 1e-2, 1e-1, 0.33]
    got = tar_at_far(scores, labels, fars, rule=rule)
    for far in fars:
        assert got[far] == reference(scores, labels.astype(int), far)
    lower, higher = tar_at_far(scores, labels, fars, "lower"), tar_at_far(scores, labels, fars, "higher")
    assert all(lower[f] <= higher[f] for f in fars) and any(lower[f] < higher[f] for f in fars)


def test_tar_at_far_known_answers():
    # 10 impostors at scores 0..9, 4 genuine at 5.5, 7.5, 8.5, 20
    scores = np.array([*range(10), 5.5, 7.5, 8.5, 20.0])
    labels = np.array([0] * 10 + [1] * 4)
    # FAR 0.1 is met exactly by two ROC points: threshold 9 (impostor 9, genuine 20 accepted: TAR 1/4)
    # and threshold 8.5 (+ genuine 8.5: 2/4); FAR 0.2 by thresholds 8 (2/4) and 7.5 (3/4)
    assert tar_at_far(scores, labels, [0.1, 0.2], rule="higher") == {0.1: 0.5, 0.2: 0.75}
    assert tar_at_far(scores, labels, [0.1, 0.2], rule="lower") == {0.1: 0.25, 0.2: 0.5}
    # separable scores: ROC (0, 0), (0, 1), (1, 1), all 0.5 away from FAR 0.5; the lower rule takes the
    # first point, whose threshold accepts nothing (TAR 0), as the reference does
    perfect = np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1])
    assert tar_at_far(*perfect, [0.5], rule="higher") == {0.5: 1.0}
    assert tar_at_far(*perfect, [0.5], rule="lower") == {0.5: 0.0}


def test_tar_at_an_unresolvable_far_is_empty_with_a_warning(caplog):
    scores = np.array([*range(10), 5.5, 7.5, 8.5, 20.0])
    labels = np.array([0] * 10 + [1] * 4)  # 10 impostors resolve FAR >= 0.1 only
    with caplog.at_level("WARNING"):
        got = tar_at_far(scores, labels, [0.0, 0.05, 0.1])
    assert got == {0.0: None, 0.05: None, 0.1: 0.25}
    assert "10 impostor pairs" in caplog.text and "5e-02" in caplog.text


def test_tar_at_far_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="lower, higher"):
        tar_at_far(np.array([0.0, 1.0]), np.array([0, 1]), [0.5], rule="middle")
