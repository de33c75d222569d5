"""Protocol metrics of docs/method.md §7: 10-fold verification accuracy, closed-set CMC, TAR at FAR.

All three return fractions in [0, 1]; the benchmarks turn them into percentages.
Each function is vectorised and bounded in memory (the benchmark tool ``tools/bench_eval.py`` times
them at full benchmark scale).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

__all__ = [
    "TAR_RULES",
    "VERIFICATION_THRESHOLDS",
    "cmc",
    "l2_normalize",
    "pair_distances",
    "roc",
    "tar_at_far",
    "verification_accuracy",
    "verification_accuracy_from_distances",
]

log = logging.getLogger(__name__)

VERIFICATION_THRESHOLDS = np.arange(0, 4, 0.01)
"""Thresholds on the squared Euclidean distance, as InsightFace's ``verification.py`` (0 .. 3.99)."""

_CMC_CHUNK_BYTES = 1 << 28  # bound of the probe-chunk x gallery score block (256 MiB of float32)


def l2_normalize(x: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Rows divided by their L2 norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=dtype)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(dtype).tiny)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of the normalised consecutive pairs ``(2i, 2i+1)``.

    Computed exactly as InsightFace's ``verification.py``: ``sklearn.preprocessing.normalize``, then
    ``np.sum(np.square(e1 - e2), 1)`` in the embeddings' own dtype (float32 from the embedder).
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise ValueError(f"embeddings must be [2N, D] (consecutive pairs), got shape {emb.shape}")
    if emb.dtype not in (np.float32, np.float64):
        emb = emb.astype(np.float64)
    emb = normalize(emb)
    return np.sum(np.square(np.subtract(emb[0::2], emb[1::2])), 1)


def verification_accuracy(
    embeddings: np.ndarray, issame: Sequence[bool] | np.ndarray, folds: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """InsightFace's k-fold verification accuracy (docs/method.md §7, HQ verification).

    ``embeddings`` [2N, D] hold the pairs consecutively; they are L2-normalised here and compared by
    squared Euclidean distance (:func:`pair_distances`). Pairs are split by
    ``KFold(n_splits=folds, shuffle=False)``; on each split the threshold of
    ``VERIFICATION_THRESHOLDS`` with the best accuracy on the other folds is chosen (the FIRST best,
    as ``np.argmax`` in InsightFace's ``calculate_roc``), and the prediction ``dist < threshold`` is
    scored on the held-out fold. Returns ``(fold_accuracies, best_thresholds)``, each of length ``folds``.
    """
    return verification_accuracy_from_distances(pair_distances(embeddings), issame, folds)


def verification_accuracy_from_distances(
    dist: np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    folds: int = 10,
    thresholds: np.ndarray = VERIFICATION_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`verification_accuracy` on precomputed pair distances.

    Sort-based: for every fold the numbers of genuine and impostor pairs with ``dist < t`` are
    ``searchsorted`` counts over that fold's sorted distances, so all thresholds cost one pass; the
    counts of the training folds are the totals minus the held-out fold's.
    """
    dist = np.asarray(dist, dtype=np.float64)  # exact for float32 input: compared as InsightFace compares
    same = np.asarray(issame, dtype=bool)
    if dist.shape != same.shape or dist.ndim != 1:
        raise ValueError(f"{dist.shape[0] if dist.ndim else 0} pairs of embeddings but {same.size} issame labels")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    splits = list(KFold(n_splits=folds, shuffle=False).split(np.arange(dist.size)))
    # below[f, s, t]: pairs of fold f with label s (0 impostor, 1 genuine) and dist < thresholds[t]
    below = np.empty((folds, 2, thresholds.size), dtype=np.int64)
    count = np.empty((folds, 2), dtype=np.int64)
    for f, (_, test) in enumerate(splits):
        for s in (0, 1):
            d = np.sort(dist[test][same[test] == bool(s)])
            below[f, s] = np.searchsorted(d, thresholds, side="left")
            count[f, s] = d.size
    accuracies = np.empty(folds)
    best = np.empty(folds)
    for f in range(folds):
        train_below = below.sum(0) - below[f]
        train_count = count.sum(0) - count[f]
        correct = train_below[1] + (train_count[0] - train_below[0])  # TP + TN at every threshold
        t = int(np.argmax(correct))  # first maximum (the train-set size is the same for all t)
        best[f] = thresholds[t]
        accuracies[f] = (below[f, 1, t] + count[f, 0] - below[f, 0, t]) / count[f].sum()
    return accuracies, best


def cmc(
    probe: np.ndarray,
    gallery: np.ndarray,
    probe_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ranks: Iterable[int] = (1, 5, 20),
    chunk: int | None = None,
) -> np.ndarray:
    """Closed-set cumulative match characteristic (docs/method.md §7, TinyFace/SCface): fraction of probes
    whose rank is ``<= r`` for every ``r`` in ``ranks``.

    Cosine similarity of the L2-normalised features (float32). Gallery distractors carry label -1
    and never match. Probes with no mate in the gallery are ignored (closed set). A probe's rank is
    1 + the number of gallery entries scoring STRICTLY higher than its best genuine score; so several
    gallery images of its identity count once (the best), and ties with an impostor are resolved in
    the probe's favour (an argsort-based CMC would place tied entries in index order instead; exact
    ties do not occur with real-valued features). Computed in probe chunks of at most
    ``chunk x len(gallery)`` scores; the genuine score is read from the same score block so it is
    bit-identical to the impostor scores it is compared with.
    """
    probe_labels = np.asarray(probe_labels).reshape(-1)
    gallery_labels = np.asarray(gallery_labels).reshape(-1)
    ranks = np.asarray(list(ranks), dtype=np.int64)
    if len(probe) != probe_labels.size or len(gallery) != gallery_labels.size:
        raise ValueError(
            f"{len(probe)} probes with {probe_labels.size} labels, "
            f"{len(gallery)} gallery features with {gallery_labels.size} labels"
        )
    # genuine pairs (probe, gallery index), grouped by probe: gallery sorted by label, then a label lookup
    real = np.flatnonzero(gallery_labels != -1)
    order = real[np.argsort(gallery_labels[real], kind="stable")]
    sorted_labels = gallery_labels[order]
    first = np.searchsorted(sorted_labels, probe_labels, side="left")
    end = np.searchsorted(sorted_labels, probe_labels, side="right")
    valid = (end > first) & (probe_labels != -1)
    probe_idx = np.flatnonzero(valid)
    if probe_idx.size == 0:
        raise ValueError("no probe has a mate in the gallery: closed-set CMC is undefined")
    gallery_n = l2_normalize(gallery, np.float32)
    chunk = chunk or max(1, _CMC_CHUNK_BYTES // (4 * max(1, len(gallery))))
    rank = np.empty(probe_idx.size, dtype=np.int64)
    for start in range(0, probe_idx.size, chunk):
        rows = probe_idx[start : start + chunk]
        scores = l2_normalize(probe[rows], np.float32) @ gallery_n.T
        n_mates = end[rows] - first[rows]
        row_of_pair = np.repeat(np.arange(rows.size), n_mates)
        pair_cols = order[_ranges(first[rows], n_mates)]
        genuine = scores[row_of_pair, pair_cols]
        best = np.maximum.reduceat(genuine, np.concatenate(([0], np.cumsum(n_mates)[:-1])))
        higher = scores > best[:, None]
        # row by row: count_nonzero over a flat row is a popcount, ~2x faster than axis=1
        rank[start : start + rows.size] = 1 + np.array([np.count_nonzero(row) for row in higher])
        del scores, higher  # free the block before the next one is allocated
    return (rank[:, None] <= ranks[None, :]).mean(0)


def _ranges(first: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(first[i], first[i] + lengths[i])`` without a Python loop."""
    total = int(lengths.sum())
    starts = np.repeat(first - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return starts + np.arange(total)


TAR_RULES = ("lower", "higher")
"""Which ROC point serves a target FAR when several are equally near it (docs/method.md §7.5)."""


def tar_at_far(
    scores: np.ndarray, labels: np.ndarray, fars: Iterable[float], rule: str = "lower"
) -> dict[float, float | None]:
    """True accept rate at each false accept rate (docs/method.md §7, IJB-B/C).

    ``roc_curve(labels, scores)`` (sklearn defaults, so collinear points are dropped); for each target
    FAR the operating point is the ROC point whose FPR is NEAREST to it (``argmin |fpr - far|``, which
    may lie slightly above the target). Among equally near points ``rule="lower"`` takes the first,
    i.e. the lower TAR (the QGFace reference: ``min`` over ``(gap, index)``), ``rule="higher"`` the last,
    i.e. the higher TAR (InsightFace ``eval_ijbc``: the curve is flipped before the same ``min``).
    A FAR below 1 / impostor pairs cannot be resolved by the pairs at hand: its TAR is ``None``
    (with a warning), never a number. Higher score = more similar.
    """
    if rule not in TAR_RULES:
        raise ValueError(f"unknown TAR point rule {rule!r}; choose one of {', '.join(TAR_RULES)}")
    fpr, tpr = roc(scores, labels)
    impostors = int(np.sum(~np.asarray(labels).reshape(-1).astype(bool)))
    result: dict[float, float | None] = {}
    unresolved = []
    for far in fars:
        if far < 1.0 / impostors:
            result[float(far)] = None
            unresolved.append(far)
            continue
        gap = np.abs(fpr - far)
        nearest = np.flatnonzero(gap == gap.min())
        result[float(far)] = float(tpr[nearest[0] if rule == "lower" else nearest[-1]])
    if unresolved:
        log.warning(
            "TAR at FAR %s left empty: %d impostor pairs resolve FARs down to %.1e only",
            ", ".join(f"{f:.0e}" for f in sorted(set(unresolved))),
            impostors,
            1.0 / impostors,
        )
    return result


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of ``sklearn.metrics.roc_curve``; clear error when a class is absent."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores).reshape(-1)
    if scores.size != labels.size:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if labels.all() or not labels.any():
        raise ValueError("TAR@FAR needs both genuine (label 1) and impostor (label 0) pairs")
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr
