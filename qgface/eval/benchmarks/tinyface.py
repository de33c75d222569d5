"""TinyFace 1:N identification (docs/method.md §7): closed-set CMC rank-1/5/20 (%).

Protocol files (``<data_root>/tinyface/Testing_Set/``): ``probe_img_ID_pairs.mat`` (``probe_set``,
``probe_ids``) and ``gallery_match_img_ID_pairs.mat`` (``gallery_set``, ``gallery_ids``). Images are
read from the aligned copies in ``<data_root>/<eval.tinyface_aligned_dir>/{Probe,Gallery_Match,
Gallery_Distractor}/``. Canonical list: probes and gallery matches in ``.mat`` order, then every image
file of the aligned ``Gallery_Distractor`` folder sorted by name (label -1). Labels come from the
``.mat`` identity numbers; a file's own identity is its name's prefix before ``_``, and disagreements
with the ``.mat`` are logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.io

from qgface.eval.benchmarks.base import Benchmark, BenchmarkError, BenchmarkOptions, EvalOutput, read_file_bytes
from qgface.eval.metrics import cmc
from qgface.vocab.benchmarks import TINYFACE_ALIGNED_DIR

__all__ = ["CMC_RANKS", "IMAGE_SUFFIXES", "TinyFace", "list_images"]

log = logging.getLogger(__name__)

CMC_RANKS = tuple(range(1, 21))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: Path, benchmark: str) -> list[str]:
    """Image file names in ``folder``, sorted (never directory order)."""
    if not folder.is_dir():
        raise BenchmarkError(f"{benchmark}: image folder {folder} not found")
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _mat_column(path: Path, key: str, benchmark: str) -> list:
    if not path.is_file():
        raise BenchmarkError(
            f"{benchmark}: protocol file {path} not found (it ships with the TinyFace "
            "Testing_Set); check eval.data_root"
        )
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise BenchmarkError(f"{benchmark}: {path} is not a readable MATLAB file: {exc}") from exc
    if key not in mat:
        raise BenchmarkError(
            f"{benchmark}: {path} has no variable {key!r} (has {sorted(k for k in mat if not k.startswith('__'))})"
        )
    return [np.asarray(v).ravel()[0] if np.asarray(v).size else "" for v in np.asarray(mat[key], dtype=object).ravel()]


def _identity(name: str) -> str:
    return Path(name).name.split("_", 1)[0]


class TinyFace(Benchmark):
    """Probes vs gallery matches + distractors; keys ``tinyface_rank1``, ``tinyface_rank5``, ``tinyface_rank20``."""

    name = "tinyface"

    @classmethod
    def from_options(cls, name: str, data_root: str | Path, options: BenchmarkOptions) -> TinyFace:
        return cls(data_root, options.tinyface_aligned_dir)

    def __init__(self, data_root: str | Path, aligned_dir: str = TINYFACE_ALIGNED_DIR) -> None:
        super().__init__(data_root)
        testing = self.data_root / "tinyface" / "Testing_Set"
        self.aligned = self.data_root / aligned_dir
        probes = [str(s) for s in _mat_column(testing / "probe_img_ID_pairs.mat", "probe_set", self.name)]
        probe_ids = [int(v) for v in _mat_column(testing / "probe_img_ID_pairs.mat", "probe_ids", self.name)]
        matches = [str(s) for s in _mat_column(testing / "gallery_match_img_ID_pairs.mat", "gallery_set", self.name)]
        match_ids = [int(v) for v in _mat_column(testing / "gallery_match_img_ID_pairs.mat", "gallery_ids", self.name)]
        if len(probes) != len(probe_ids) or len(matches) != len(match_ids):
            raise BenchmarkError(
                f"{self.name}: {testing}: the .mat files list {len(probes)} probes with "
                f"{len(probe_ids)} ids and {len(matches)} gallery images with {len(match_ids)} ids"
            )
        distractors = list_images(self.aligned / "Gallery_Distractor", self.name)
        self.num_probes, self.num_matches = len(probes), len(matches)
        self.image_names = (
            [f"Probe/{n}" for n in probes]
            + [f"Gallery_Match/{n}" for n in matches]
            + [f"Gallery_Distractor/{n}" for n in distractors]
        )
        self.labels = np.array(probe_ids + match_ids + [-1] * len(distractors), dtype=np.int64)
        mismatched = sum(_identity(n) != str(i) for n, i in zip(probes + matches, probe_ids + match_ids))
        if mismatched:
            log.warning(
                "%s: %d probe/gallery file names disagree with their .mat identity (labels follow the .mat files)",
                self.name,
                mismatched,
            )

    def load_bytes(self, index: int) -> bytes:
        return read_file_bytes(self.aligned / self.image_names[index], self.name)

    def evaluate(self, embeddings: np.ndarray, norms: np.ndarray) -> EvalOutput:
        self._check_features(embeddings, norms)
        p = self.num_probes
        curve = cmc(embeddings[:p], embeddings[p:], self.labels[:p], self.labels[p:], ranks=CMC_RANKS) * 100
        metrics = {f"tinyface_rank{r}": float(curve[r - 1]) for r in (1, 5, 20)}
        return EvalOutput(metrics, {"cmc": {"rank": list(CMC_RANKS), "identification_rate": curve.tolist()}})

    def sizes(self) -> dict[str, int]:
        gallery = len(self) - self.num_probes
        return {
            "images": len(self),
            "probes": self.num_probes,
            "gallery": gallery,
            "gallery_match": self.num_matches,
            "distractors": gallery - self.num_matches,
        }
