"""IJB-B / IJB-C 1:1 template verification (docs/method.md §7), as InsightFace's IJB evaluation.

Files under ``<data_root>/IJBB/`` (``IJBC/`` likewise, ``ijbc_`` prefixes): ``meta/ijbb_name_5pts_score.txt``
(image, 5 landmarks in loose-crop pixels, detector score), ``meta/ijbb_face_tid_mid.txt`` (image,
template, media; same images in the same order), ``meta/ijbb_template_pair_label.txt`` and the loose
crops ``loose_crop/<image>``.

Image ``i`` = line ``i`` of the 5-point file; its canonical-list entry is that whole line, so changed
landmarks change the list (and a compressed copy no longer matches). Its bytes are the distributed
loose crop, unchanged; the compressed record also carries its 5 landmarks and detector score as the
float32 label array. The crop is aligned to the ArcFace template (:mod:`qgface.eval.align`) when it
is read, with the protocol file's landmarks, in memory as InsightFace does: the files and the
``.rec`` give the same pixels.

Two protocols (``eval.ijb_protocol``, docs/method.md §7.5) differ in the image feature and the ROC point:
- ``qgface`` (default; the paper's reference): the fused flip-test unit embedding, unweighted; among ROC
  points equally near a target FAR the one with the LOWER TAR;
- ``insightface`` (InsightFace ``eval_ijbc`` N1D1F2): the fused embedding times its fused norm times the
  detector score; among equally near points the one with the HIGHER TAR.
Media feature = mean of its frames' features, template feature = sum of its media, L2-normalised;
pair score = cosine of the two templates. A FAR below 1 / impostor pairs is reported empty.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import numpy as np
import torch

from qgface.eval.align import align_face
from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, BenchmarkOptions, EvalOutput, read_file_bytes
from qgface.eval.metrics import l2_normalize, tar_at_far
from qgface.vocab.benchmarks import IJB_PROTOCOLS

__all__ = ["FARS", "IJB", "IJB_PROTOCOLS", "image_weights", "pair_scores", "template_features"]

"""Protocol name -> ROC point rule of :func:`qgface.eval.metrics.tar_at_far` (docs/method.md §7.5)."""

FARS = {"1e-6": 1e-6, "1e-5": 1e-5, "1e-4": 1e-4, "1e-3": 1e-3, "1e-2": 1e-2, "1e-1": 1e-1}
_CURVE_FARS = np.logspace(-6, 0, 61)
_CHUNK = 1 << 16


def _read_table(path: Path, benchmark: str) -> list[list[str]]:
    if not path.is_file():
        raise BenchmarkError(f"{benchmark}: protocol file {path} not found; check eval.data_root")
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _read_ints(path: Path, columns: int, benchmark: str) -> np.ndarray:
    """A whitespace-separated integer table, parsed without a Python loop over lines."""
    if not path.is_file():
        raise BenchmarkError(f"{benchmark}: protocol file {path} not found; check eval.data_root")
    values = np.array(path.read_bytes().split(), dtype=np.int64)
    if values.size % columns:
        raise BenchmarkError(f"{benchmark}: {path}: expected {columns} integers per line")
    return values.reshape(-1, columns)


def template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(unique template ids, L2-normalised template features): per template, the mean over each
    media's images (times ``weights``) summed over its media. Float64 accumulation in chunks."""
    unique_t, t_idx = np.unique(templates, return_inverse=True)
    media_keys, m_idx = np.unique(np.stack([t_idx, medias]), axis=1, return_inverse=True)
    m_idx = torch.from_numpy(m_idx.reshape(-1).astype(np.int64))
    sums = torch.zeros(media_keys.shape[1], features.shape[1], dtype=torch.float64)
    for start in range(0, len(features), _CHUNK):
        part = torch.from_numpy(np.asarray(features[start : start + _CHUNK], dtype=np.float64))
        if weights is not None:
            part = part * torch.from_numpy(np.asarray(weights[start : start + _CHUNK], dtype=np.float64))[:, None]
        sums.index_add_(0, m_idx[start : start + _CHUNK], part)
    counts = torch.bincount(m_idx, minlength=len(sums)).to(torch.float64)
    media_mean = sums / counts[:, None]
    template = torch.zeros(len(unique_t), features.shape[1], dtype=torch.float64)
    template.index_add_(0, torch.from_numpy(media_keys[0].astype(np.int64)), media_mean)
    return unique_t, l2_normalize(template.numpy())


def image_weights(protocol: str, norms: np.ndarray, detector_scores: np.ndarray) -> np.ndarray | None:
    """Per-image weight of the unit embeddings in template pooling: none for ``qgface``, fused norm x
    detector score for ``insightface`` (N1D1)."""
    if protocol not in IJB_PROTOCOLS:
        raise ValueError(f"unknown IJB protocol {protocol!r}; choose one of {', '.join(IJB_PROTOCOLS)}")
    if protocol == "qgface":
        return None
    return np.asarray(norms, dtype=np.float64).reshape(-1) * np.asarray(detector_scores, dtype=np.float64)


def pair_scores(
    template_feats: np.ndarray, first: np.ndarray, second: np.ndarray, block_bytes: int = 1 << 28
) -> np.ndarray:
    """Cosine score (float32) of every template pair ``(first[k], second[k])`` of normalised rows.

    Pairs are grouped by their first template; for a block of those templates one matrix product
    against every template that occurs second gives all their scores (at most ``block_bytes`` of
    float32), from which the block's pairs are gathered. At IJB scale (8M pairs of 12k templates) this
    is several times faster than per-pair dot products, which are bound by random memory reads.
    """
    feats = np.ascontiguousarray(template_feats, dtype=np.float32)
    rows, row_of_pair = np.unique(first, return_inverse=True)
    cols, col_of_pair = np.unique(second, return_inverse=True)
    row_of_pair, col_of_pair = row_of_pair.reshape(-1), col_of_pair.reshape(-1)
    order = np.argsort(row_of_pair, kind="stable")
    bounds = np.searchsorted(row_of_pair[order], np.arange(len(rows) + 1))
    right = torch.from_numpy(feats[cols]).T
    block = max(1, block_bytes // (4 * len(cols)))
    scores = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(rows), block):
        end = min(start + block, len(rows))
        sims = (torch.from_numpy(feats[rows[start:end]]) @ right).numpy()
        pairs = order[bounds[start] : bounds[end]]
        scores[pairs] = sims[row_of_pair[pairs] - start, col_of_pair[pairs]]
    return scores


class IJB(Benchmark):
    """Keys ``<name>_tar_at_1e-6`` ... ``<name>_tar_at_1e-1`` (%) for ``ijbb`` / ``ijbc``."""

    params = {
        "payload": "distributed-loose-crop",
        "label": "5pts+score-float32",
        "align_at_read": "arcface112-umeyama-warpaffine-v1",
    }

    @classmethod
    def from_options(cls, name: str, data_root: str | Path, options: BenchmarkOptions) -> IJB:
        return cls(data_root, name, options.ijb_protocol)

    def __init__(self, data_root: str | Path, name: str = "ijbb", protocol: str = "qgface") -> None:
        super().__init__(data_root)
        if name not in ("ijbb", "ijbc"):
            raise ValueError(f"IJB benchmark must be ijbb or ijbc, got {name!r}")
        if protocol not in IJB_PROTOCOLS:
            raise ValueError(f"unknown IJB protocol {protocol!r}; choose one of {', '.join(IJB_PROTOCOLS)}")
        self.name = self.rec_name = name
        self.protocol = protocol
        self.root = self.data_root / name.upper()
        meta = self.root / "meta"
        rows = _read_table(meta / f"{name}_name_5pts_score.txt", name)
        if any(len(r) != 12 for r in rows):
            raise BenchmarkError(
                f"{name}: {meta / f'{name}_name_5pts_score.txt'}: every line must be "
                "'image x1 y1 ... x5 y5 score' (12 fields)"
            )
        self.image_names = [" ".join(r) for r in rows]
        self.files = [r[0] for r in rows]
        self.landmarks = np.array([r[1:11] for r in rows], dtype=np.float64).reshape(-1, 5, 2)
        self.scores = np.array([r[11] for r in rows], dtype=np.float64)
        tid_mid = _read_table(meta / f"{name}_face_tid_mid.txt", name)
        if [r[0] for r in tid_mid] != self.files:
            raise BenchmarkError(
                f"{name}: {meta / f'{name}_face_tid_mid.txt'} must list the same images in the "
                f"same order as {name}_name_5pts_score.txt"
            )
        self.templates = np.array([r[1] for r in tid_mid], dtype=np.int64)
        self.medias = np.array([r[2] for r in tid_mid], dtype=np.int64)
        self.labels = np.arange(len(self.image_names))
        self.meta = meta
        self.pair_file = meta / f"{name}_template_pair_label.txt"
        self._num_pairs: int | None = None

    def load_bytes(self, index: int) -> bytes:
        return read_file_bytes(self.root / "loose_crop" / self.files[index], self.name)

    def record_label(self, index: int) -> np.ndarray:
        return np.append(self.landmarks[index].ravel(), self.scores[index]).astype(np.float32)

    def embed_items(self) -> list[tuple[int, Hashable]]:
        return [(i, i) for i in range(len(self))]  # the variant is the image index: its landmarks

    def transform(self, variant: Hashable, bgr: np.ndarray) -> np.ndarray:
        return align_face(bgr, self.landmarks[int(variant)])

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        self._check_features(embeddings, norms)
        pairs = _read_ints(self.pair_file, 3, self.name)
        self._num_pairs = len(pairs)
        weights = image_weights(self.protocol, norms, self.scores)
        unique_t, feats = template_features(embeddings, self.templates, self.medias, weights)
        pos = np.searchsorted(unique_t, pairs[:, :2]).clip(0, len(unique_t) - 1)
        missing = unique_t[pos] != pairs[:, :2]
        if missing.any():
            raise BenchmarkError(
                f"{self.name}: {self.pair_file}: template {pairs[:, :2][missing][0]} has no "
                f"image in {self.name}_face_tid_mid.txt"
            )
        scores = pair_scores(feats, pos[:, 0], pos[:, 1])
        rule = IJB_PROTOCOLS[self.protocol]
        tar = tar_at_far(scores, pairs[:, 2], FARS.values(), rule=rule)  # warns about unresolvable FARs
        metrics = {f"{self.name}_tar_at_{key}": _percent(tar[far]) for key, far in FARS.items()}
        resolvable = [float(f) for f in _CURVE_FARS if f >= 1.0 / max(1, int(np.sum(pairs[:, 2] == 0)))]
        curve_tar = tar_at_far(scores, pairs[:, 2], resolvable, rule=rule)
        curve = {"far": resolvable, "tar": [curve_tar[f] * 100 for f in resolvable]}
        return EvalOutput(metrics, {"roc": curve})

    def sizes(self) -> dict[str, int]:
        sizes = {
            "images": len(self),
            "templates": int(np.unique(self.templates).size),
            "medias": int(np.unique(np.stack([self.templates, self.medias]), axis=1).shape[1]),
        }
        if self._num_pairs is not None:
            sizes["pairs"] = self._num_pairs
        return sizes


def _percent(value: float | None) -> float | None:
    return None if value is None else value * 100
