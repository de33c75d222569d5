"""IJB-B / IJB-C 1:N identification (docs/method.md §7.6), as the reference's ``validate_IJB_BC.identification``.

Same images, landmarks, templates and media as the 1:1 benchmark (it reads the same compressed
``.rec``) plus three lists in ``meta/``, each a CSV with a header line and the template id and subject
id in its first two columns (one row per image): the galleries ``ijbb_1N_gallery_S1.csv`` and
``ijbb_1N_gallery_S2.csv`` (IJB-C: ``ijbc_1N_gallery_G1.csv``, ``ijbc_1N_gallery_G2.csv``) and the probes
``<name>_1N_probe_mixed.csv``. Template features are pooled as for 1:1 under the same
``eval.ijb_protocol``. The gallery is G1 and G2 together; every probe subject must own exactly one
gallery template (closed set). Metrics: rank-1/5 and TPIR at FPIR 1e-2 / 1e-1 (%), where the
threshold at FPIR f is the ceil(f * probes)-th highest non-mate score and TPIR the fraction of probes
whose mate scores above it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from qgface.eval.benchmarks.base import BenchmarkError, EvalOutput
from qgface.eval.benchmarks.ijb import IJB, image_weights, template_features

__all__ = ["FPIRS", "IJB1N", "identification_metrics", "read_template_subjects"]

FPIRS = {"1e-2": 1e-2, "1e-1": 1e-1}
RANKS = (1, 5)
_GALLERIES = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}
_CHUNK = 1024


def read_template_subjects(path: Path, benchmark: str) -> tuple[np.ndarray, np.ndarray]:
    """(templates, subjects) of a 1:N CSV (header skipped), one subject per template (its first row)."""
    if not path.is_file():
        raise BenchmarkError(f"{benchmark}: protocol file {path} not found; check eval.data_root")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    try:
        pairs = np.array([(int(r[0]), int(r[1])) for r in rows if r], dtype=np.int64).reshape(-1, 2)
    except (ValueError, IndexError):
        raise BenchmarkError(
            f"{benchmark}: {path}: every line after the header must start with TEMPLATE_ID,SUBJECT_ID (integers)"
        ) from None
    templates, first = np.unique(pairs[:, 0], return_index=True)
    return templates, pairs[first, 1]


def identification_metrics(
    probe: np.ndarray,
    gallery: np.ndarray,
    mate: np.ndarray,
    ranks: tuple[int, ...] = RANKS,
    fpirs: tuple[float, ...] = tuple(FPIRS.values()),
) -> tuple[dict[int, float], dict[float, float]]:
    """Closed-set rank-k rates and TPIR at FPIR (fractions) of unit probe/gallery rows; ``mate[i]`` is
    the gallery row of probe ``i``'s subject. Rank = 1 + non-mates scoring strictly above the mate.
    The threshold at FPIR f is the ``ceil(f * P)``-th largest of all P x (G-1) non-mate scores; TPIR =
    fraction of probes whose mate score exceeds it (InsightFace's / the reference's rule). Probe chunks
    keep memory at ``chunk x G`` scores; only the top ``ceil(max f * P)`` non-mate scores are kept."""
    count = len(probe)
    keep = max(math.ceil(count * f) for f in fpirs)
    rank = np.empty(count, dtype=np.int64)
    mate_scores = np.empty(count, dtype=np.float64)
    top = np.empty(0, dtype=np.float64)
    for start in range(0, count, _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, count))
        scores = probe[rows] @ gallery.T
        mate_scores[rows] = scores[np.arange(rows.size), mate[rows]]
        scores[np.arange(rows.size), mate[rows]] = -np.inf
        rank[rows] = 1 + np.sum(scores > mate_scores[rows, None], axis=1)
        flat = scores[np.isfinite(scores)]
        top = np.concatenate([top, flat])
        if top.size > keep:
            top = np.partition(top, top.size - keep)[-keep:]
    top = np.sort(top)[::-1]
    rates = {r: float(np.mean(rank <= r)) for r in ranks}
    tpir = {}
    for f in fpirs:
        k = math.ceil(count * f)
        tpir[f] = float(np.mean(mate_scores > top[k - 1])) if k <= top.size else 0.0
    return rates, tpir


class IJB1N(IJB):
    """Keys ``<name>_rank1``, ``<name>_rank5``, ``<name>_tpir_at_fpir_1e-2``, ``<name>_tpir_at_fpir_1e-1``
    (%) for ``ijbb_1n`` / ``ijbc_1n``."""

    def __init__(self, data_root: str | Path, name: str = "ijbb_1n", protocol: str = "qgface") -> None:
        if name not in ("ijbb_1n", "ijbc_1n"):
            raise ValueError(f"IJB 1:N benchmark must be ijbb_1n or ijbc_1n, got {name!r}")
        base = name[:4]
        super().__init__(data_root, base, protocol)
        self.name, self.rec_name = name, base
        first, second = _GALLERIES[base]
        gallery = [read_template_subjects(self.meta / f"{base}_1N_gallery_{g}.csv", name) for g in (first, second)]
        self.gallery_templates = np.concatenate([g[0] for g in gallery])
        self.gallery_subjects = np.concatenate([g[1] for g in gallery])
        self.probe_file = self.meta / f"{base}_1N_probe_mixed.csv"
        self.probe_templates, self.probe_subjects = read_template_subjects(self.probe_file, name)
        subjects, counts = np.unique(self.gallery_subjects, return_counts=True)
        if (counts != 1).any():
            raise BenchmarkError(
                f"{name}: subject {subjects[counts != 1][0]} owns several gallery templates "
                f"in {self.meta}/{base}_1N_gallery_{first}/{second}.csv (one each expected)"
            )
        position = np.searchsorted(subjects, self.probe_subjects).clip(0, max(len(subjects) - 1, 0))
        if len(subjects) == 0 or (subjects[position] != self.probe_subjects).any():
            missing = (
                self.probe_subjects[subjects[position] != self.probe_subjects] if len(subjects) else self.probe_subjects
            )
            raise BenchmarkError(f"{name}: {self.probe_file}: probe subject {missing[0]} has no gallery template")
        order = np.argsort(self.gallery_subjects)
        self.mate = order[position]  # gallery row of each probe's subject

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        self._check_features(embeddings, norms)
        weights = image_weights(self.protocol, norms, self.scores)
        unique_t, feats = template_features(embeddings, self.templates, self.medias, weights)
        rows = {}
        for role, templates in (("gallery", self.gallery_templates), ("probe", self.probe_templates)):
            pos = np.searchsorted(unique_t, templates).clip(0, len(unique_t) - 1)
            if (unique_t[pos] != templates).any():
                raise BenchmarkError(
                    f"{self.name}: {role} template {templates[unique_t[pos] != templates][0]} has "
                    f"no image in {self.rec_name}_face_tid_mid.txt"
                )
            rows[role] = feats[pos]
        rates, tpir = identification_metrics(rows["probe"], rows["gallery"], self.mate)
        metrics = {f"{self.name}_rank{r}": v * 100 for r, v in rates.items()}
        metrics.update({f"{self.name}_tpir_at_fpir_{key}": tpir[f] * 100 for key, f in FPIRS.items()})
        return EvalOutput(metrics)

    def sizes(self) -> dict[str, int]:
        return {
            "images": len(self),
            "gallery_templates": len(self.gallery_templates),
            "probe_templates": len(self.probe_templates),
        }
