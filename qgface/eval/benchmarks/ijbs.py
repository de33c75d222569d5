"""IJB-S surveillance video identification (docs/method.md §7.7), as the QGFace reference's
``validate_IJB_S.py`` computes it (the PFE ``IJBSTest`` protocol).

Files under ``<data_root>/IJBS/``: the image list ``image_list_mtcnn_fail_skipped_v1.csv`` (header, an
index column and a ``path`` column; ``<PID>/videos_<VIDEO>_<FRAME>.jpg`` for video frames,
``<PID>/img_<IMAGE>.jpg`` for still photos), the aligned 112x112 crops ``aligned/<path>`` and the
protocol CSVs ``protocols/`` (each with a header line): ``cs6_metadata.csv`` (subject id, file name),
``cs6_surveillance_to_single-booking_probe.csv`` and ``cs6_surveillance_to_surveillance_probe.csv``
(one video name per line), ``galleries/cs6_surveillance_to_{single,booking,surveillance}_g{1,2}.csv``
(second column subject id, third column file name). Canonical list = the image list in order; the
records hold the crops unchanged with the subject id as label (nothing to align).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path, PurePosixPath

import numpy as np

from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, EvalOutput, read_file_bytes

__all__ = ["CLOSED_RANKS", "FPIRS", "IJBS", "PROTOCOLS", "closed_set_rates", "open_set_tpir", "template_feature"]

CLOSED_RANKS = (1, 5, 10)
FPIRS = {"1e-2": 0.01, "1e-1": 0.1}
PROTOCOLS = {
    "sur2single": ("video2image", "single"),
    "sur2book": ("video2image", "booking"),
    "sur2sur": ("video2video", "surveillance"),
}
"""metric prefix -> (probe list, gallery kind) of the three reported protocols"""
IMAGE_LIST = "image_list_mtcnn_fail_skipped_v1.csv"
_PROBE_FILES = {
    "video2image": "cs6_surveillance_to_single-booking_probe.csv",
    "video2video": "cs6_surveillance_to_surveillance_probe.csv",
}


@dataclasses.dataclass
class Template:
    subject: int
    images: np.ndarray
    """rows of the image list it pools (may be empty: all its frames failed alignment)"""


def template_feature(features: np.ndarray) -> np.ndarray:
    """Mean of the image features, L2-normalised (``+1e-8`` as PFE ``average_fuse``); zero when empty."""
    if len(features) == 0:
        return np.zeros(features.shape[1])
    mean = np.asarray(features, dtype=np.float64).mean(0)
    return mean / (np.linalg.norm(mean) + 1e-8)


def closed_set_rates(scores: np.ndarray, mate: np.ndarray, ranks: tuple[int, ...] = CLOSED_RANKS) -> dict[int, float]:
    """Rank-k rates over the probes with a mate (``mate[i]`` its gallery column, -1 none; PFE ``DIR_FAR``
    at FAR 1). A probe's rank is 1 + the gallery entries scoring at least its mate's score (ties count
    against it: a probe or gallery template without images scores 0 everywhere and must not succeed)."""
    rows = np.flatnonzero(mate >= 0)
    if rows.size == 0:
        raise ValueError("no probe has a mate in the gallery: closed-set identification is undefined")
    mate_scores = scores[rows, mate[rows]]
    rank = np.sum(scores[rows] >= mate_scores[:, None], axis=1)  # includes the mate itself
    return {r: float(np.mean(rank <= r)) for r in ranks}


def open_set_tpir(
    scores: np.ndarray, mate: np.ndarray, fpirs: tuple[float, ...] = tuple(FPIRS.values())
) -> dict[float, float]:
    """TPIR at each FPIR against one gallery (PFE ``DIR_FAR`` + ``find_thresholds_by_FAR``).

    Non-mated probes (``mate == -1``) give their highest score each; with those sorted high to low and
    ``k = floor(N_nonmated * fpir)``, the threshold is the k-th of them (``k = 0``: the highest + 1e-8).
    TPIR = fraction of mated probes whose mate is the top gallery entry (rank 1, ties against it) and
    scores at least the threshold."""
    nonmated = scores[mate < 0]
    if len(nonmated) == 0:
        raise ValueError("open-set identification needs at least one probe without a mate in the gallery")
    highest = np.sort(nonmated.max(axis=1))[::-1]
    rows = np.flatnonzero(mate >= 0)
    mate_scores = scores[rows, mate[rows]]
    top1 = np.sum(scores[rows] >= mate_scores[:, None], axis=1) == 1
    result = {}
    for fpir in fpirs:
        k = int(len(highest) * fpir)
        threshold = highest[0] + 1e-8 if k == 0 else highest[k - 1]
        result[fpir] = float(np.mean(top1 & (mate_scores >= threshold))) if rows.size else 0.0
    return result


def _read_csv(path: Path, columns: int) -> list[list[str]]:
    if not path.is_file():
        raise BenchmarkError(f"ijbs: protocol file {path} not found; check eval.data_root")
    with open(path, newline="") as handle:
        rows = [[field.strip() for field in row] for row in list(csv.reader(handle))[1:] if row]
    if any(len(r) < columns for r in rows):
        raise BenchmarkError(f"ijbs: {path}: every line after the header needs at least {columns} columns")
    return rows


def _key(subject: int | str, file_name: str) -> str:
    """Join key of a protocol file name (``videos/5004.mp4``, ``img/101146.jpg``) and a subject:
    ``<subject>_videos_5004`` / ``<subject>_img_101146``, as the image list's paths give it."""
    folder, _, name = file_name.partition("/")
    return f"{subject}_{folder}_{PurePosixPath(name).stem}"


def _path_key(path: str, listing: Path) -> str:
    """The same key from a path of the image list ``listing`` (frames of one video share it)."""
    p = PurePosixPath(path)
    parts = p.stem.split("_")
    if len(p.parts) != 2 or parts[0] not in ("videos", "img") or len(parts) < 2:
        raise BenchmarkError(
            f"ijbs: {listing}: path {path!r} is neither <PID>/videos_<VIDEO>_<FRAME>.jpg nor <PID>/img_<IMAGE>.jpg"
        )
    return f"{p.parts[0]}_{parts[0]}_{parts[1]}"


class IJBS(Benchmark):
    """Keys ``ijbs_<protocol>_rank1/5/10`` and ``ijbs_<protocol>_tpir_at_fpir_1e-2/1e-1`` (%) for the
    protocols ``sur2single``, ``sur2book``, ``sur2sur``."""

    name = "ijbs"
    params = {"payload": "distributed-aligned-crop", "label": "subject"}

    def __init__(self, data_root: str | Path) -> None:
        super().__init__(data_root)
        self.root = self.data_root / "IJBS"
        rows = _read_csv(self.root / IMAGE_LIST, 2)
        with open(self.root / IMAGE_LIST, newline="") as handle:
            header = [h.strip() for h in next(csv.reader(handle))]
        if "path" not in header:
            raise BenchmarkError(f"ijbs: {self.root / IMAGE_LIST}: the header has no 'path' column")
        self.image_names = [r[header.index("path")] for r in rows]
        self.labels = np.array([int(PurePosixPath(p).parts[0]) for p in self.image_names], dtype=np.int64)
        by_key: dict[str, list[int]] = {}
        for i, path in enumerate(self.image_names):
            by_key.setdefault(_path_key(path, self.root / IMAGE_LIST), []).append(i)
        self._by_key = {k: np.array(v, dtype=np.int64) for k, v in by_key.items()}
        proto = self.root / "protocols"
        videos = sorted(
            {(int(r[0]), r[1]) for r in _read_csv(proto / "cs6_metadata.csv", 2) if r[1].startswith("videos")}
        )
        self.probes = {}
        for kind, file in _PROBE_FILES.items():
            listed = {r[0] for r in _read_csv(proto / file, 1)}
            self.probes[kind] = [self._template(s, [v]) for s, v in videos if v in listed]
        self.galleries: dict[str, list[list[Template]]] = {"single": [], "booking": [], "surveillance": []}
        for g in (1, 2):
            single = _read_csv(proto / "galleries" / f"cs6_surveillance_to_single_g{g}.csv", 3)
            self.galleries["single"].append([self._template(int(r[1]), [r[2]]) for r in single])
            booking: dict[int, list[str]] = {}
            for r in _read_csv(proto / "galleries" / f"cs6_surveillance_to_booking_g{g}.csv", 3):
                booking.setdefault(int(r[1]), []).append(r[2])
            self.galleries["booking"].append([self._template(s, f) for s, f in sorted(booking.items())])
            pairs = sorted(
                {
                    (int(r[1]), r[2])
                    for r in _read_csv(proto / "galleries" / f"cs6_surveillance_to_surveillance_g{g}.csv", 3)
                }
            )
            self.galleries["surveillance"].append([self._template(s, [v]) for s, v in pairs])

    def _template(self, subject: int, files: list[str]) -> Template:
        empty = np.zeros(0, dtype=np.int64)
        return Template(subject, np.concatenate([self._by_key.get(_key(subject, f), empty) for f in files]))

    def load_bytes(self, index: int) -> bytes:
        return read_file_bytes(self.root / "aligned" / self.image_names[index], self.name)

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        self._check_features(embeddings, norms)
        features = np.asarray(embeddings, np.float64) * np.asarray(norms, np.float64).reshape(-1, 1)
        metrics: dict[str, float | None] = {}
        for prefix, (probe_kind, gallery_kind) in PROTOCOLS.items():
            probe = self.probes[probe_kind]
            probe_feats = np.stack([template_feature(features[t.images]) for t in probe])
            probe_subjects = np.array([t.subject for t in probe])
            parts = []
            for gallery in self.galleries[gallery_kind]:
                feats = np.stack([template_feature(features[t.images]) for t in gallery])
                parts.append((probe_feats @ feats.T, self._mates(probe_subjects, gallery, prefix)))
            if ((parts[0][1] >= 0) & (parts[1][1] >= 0)).any():
                raise BenchmarkError(
                    f"ijbs {prefix}: a subject has templates in both {gallery_kind} galleries "
                    f"under {self.root / 'protocols' / 'galleries'} (g1 and g2 must be disjoint)"
                )
            offset = len(self.galleries[gallery_kind][0])
            both = np.where(parts[1][1] >= 0, parts[1][1] + offset, parts[0][1])
            closed = closed_set_rates(np.hstack([parts[0][0], parts[1][0]]), both)
            metrics.update({f"ijbs_{prefix}_rank{r}": v * 100 for r, v in closed.items()})
            opened = [open_set_tpir(scores, mate) for scores, mate in parts]
            metrics.update(
                {
                    f"ijbs_{prefix}_tpir_at_fpir_{key}": (opened[0][f] + opened[1][f]) / 2 * 100
                    for key, f in FPIRS.items()
                }
            )
        return EvalOutput(metrics)

    def _mates(self, probe_subjects: np.ndarray, gallery: list[Template], prefix: str) -> np.ndarray:
        """Gallery row of each probe's subject in one gallery, -1 where it has none."""
        subjects = np.array([t.subject for t in gallery])
        unique, counts = np.unique(subjects, return_counts=True)
        if (counts > 1).any():
            raise BenchmarkError(
                f"ijbs {prefix}: subject {unique[counts > 1][0]} owns several templates of "
                f"one gallery under {self.root / 'protocols' / 'galleries'} (one each expected)"
            )
        row = {int(s): i for i, s in enumerate(subjects)}
        return np.array([row.get(int(s), -1) for s in probe_subjects], dtype=np.int64)

    def sizes(self) -> dict[str, int]:
        sizes = {"images": len(self)}
        sizes.update({f"{k}_probe_templates": len(v) for k, v in self.probes.items()})
        sizes.update({f"{k}_gallery_templates": sum(len(g) for g in v) for k, v in self.galleries.items()})
        return sizes
