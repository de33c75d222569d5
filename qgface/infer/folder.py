"""Embed every image of a folder tree, save/load the result, and search identity folders (docs/method.md §9).

Saved layout (``python -m qgface.embed``): ``embeddings.npy`` [N, 512] float32 unit rows,
``norms.npy`` [N] and ``index.csv`` with ``path, row, status``: every image under the source folder
is listed; ``row`` is its row in the arrays, empty when no face was found (``status`` no_face).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qgface.atomic import atomic_open, atomic_write_text
from qgface.infer.files import list_images, read_bgr
from qgface.infer.recognizer import Recognizer

__all__ = ["FolderEmbeddings", "embed_folder", "identity_templates", "load_embeddings", "save_embeddings", "top_k"]

INDEX_COLUMNS = ("path", "row", "status")


@dataclasses.dataclass
class FolderEmbeddings:
    """Embeddings of the images ``paths`` (relative to the folder); ``missing`` lists images without a face."""

    paths: list[str]
    embeddings: np.ndarray
    norms: np.ndarray
    missing: list[str]


def embed_folder(
    recognizer: Recognizer, root: str | os.PathLike, *, detect: bool | None = None, progress: bool = True
) -> FolderEmbeddings:
    """Embed every image under ``root`` in batches of ``recognizer.batch_size``.

    With ``detect=False`` every image must be an aligned 112x112 crop; otherwise an image in which
    no face is found goes to ``missing``.
    """
    root = Path(root)
    files = list_images(root)
    if not files:
        raise FileNotFoundError(f"{root} holds no image files")
    paths, missing, chunks, norm_chunks, crops = [], [], [], [], []

    def flush() -> None:
        if crops:
            emb, norm = recognizer.embed_aligned(np.stack(crops))
            chunks.append(emb)
            norm_chunks.append(norm)
            crops.clear()

    for rel in tqdm(files, desc="embed", unit="img", disable=not progress, mininterval=2):
        image = read_bgr(root / rel)  # its errors name the file
        try:
            crop = recognizer.align(image, detect)
        except ValueError as exc:
            raise ValueError(f"{root / rel}: {exc}") from None
        if crop is None:
            missing.append(rel.as_posix())
            continue
        paths.append(rel.as_posix())
        crops.append(crop)
        if len(crops) == recognizer.batch_size:
            flush()
    flush()
    embeddings = np.concatenate(chunks) if chunks else np.empty((0, 0), np.float32)
    norms = np.concatenate(norm_chunks) if norm_chunks else np.empty(0, np.float32)
    return FolderEmbeddings(paths, embeddings, norms, missing)


def save_embeddings(result: FolderEmbeddings, out: str | os.PathLike) -> Path:
    """Write ``embeddings.npy``, ``norms.npy`` and ``index.csv`` into the folder ``out``; returns the CSV path."""
    out = Path(out)
    for name, array in (("embeddings.npy", result.embeddings), ("norms.npy", result.norms)):
        with atomic_open(out / name, "wb") as f:
            np.save(f, array)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    rows = [(p, str(k), "embedded") for k, p in enumerate(result.paths)] + [(p, "", "no_face") for p in result.missing]
    writer.writerows(sorted(rows))
    atomic_write_text(out / "index.csv", text.getvalue())
    return out / "index.csv"


def load_embeddings(folder: str | os.PathLike) -> FolderEmbeddings:
    """Read what :func:`save_embeddings` wrote, checking that the index and the arrays agree."""
    folder = Path(folder)
    try:
        embeddings = np.load(folder / "embeddings.npy")
        norms = np.load(folder / "norms.npy")
        with open(folder / "index.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not a readable output of python -m qgface.embed ({exc})") from None
    embedded = sorted((int(r["row"]), r["path"]) for r in rows if r["row"])
    if [k for k, _ in embedded] != list(range(len(embeddings))) or len(norms) != len(embeddings):
        raise ValueError(
            f"{folder}/index.csv lists rows that do not match embeddings.npy "
            f"({len(embeddings)} rows) and norms.npy ({len(norms)}): re-run python -m qgface.embed"
        )
    return FolderEmbeddings([p for _, p in embedded], embeddings, norms, [r["path"] for r in rows if not r["row"]])


def identity_templates(paths: list[str], embeddings: np.ndarray) -> tuple[list[str], np.ndarray, list[int]]:
    """``(identities, unit templates [I, D], image counts)``: an identity is the first folder of a path,
    its template the normalised mean of its images' unit embeddings (as IJB templates are pooled)."""
    groups: dict[str, list[int]] = {}
    for k, path in enumerate(paths):
        identity = path.split("/")[0] if "/" in path else ""
        if not identity:
            raise ValueError(
                f"gallery image {path!r} is not inside an identity folder: expected GALLERY/<identity>/<image>"
            )
        groups.setdefault(identity, []).append(k)
    names = sorted(groups)
    templates = np.stack([embeddings[groups[n]].mean(0) for n in names]).astype(np.float64)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    return names, templates, [len(groups[n]) for n in names]


def top_k(probe: np.ndarray, templates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` templates closest to the unit ``probe``, best first."""
    scores = templates @ (probe / np.linalg.norm(probe))
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]
