"""The synthetic mixed-quality dataset: every benchmark layout of contracts.md, generated from procedural faces.

:func:`generate` writes a training set (InsightFace ``train.rec/.idx``, mostly high quality like
MS1MV2; METHOD.md §2 makes the low-quality views during training) and the evaluation data root of
METHOD.md §7: five HQ ``.bin`` pair sets, TinyFace, SCface, IJB-B and IJB-C, on identities disjoint
from training. :func:`ensure_synthetic` caches one such set per parameter combination under
``cfg.data.synthetic_dir`` (file lock, temporary folder + rename; ``synthetic.json`` written last).
Every image is a *shot* ``(kind, identity, stream, index, options)`` whose randomness is seeded by
``(seed, stream, identity, index)``, so any subset regenerates identically.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from qgface.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from qgface.data import synthetic_faces as sf
from qgface.data.binfile import save_bin
from qgface.data.images import encode_jpeg
from qgface.data.recordio import write_insightface_rec

__all__ = ["GENERATOR_VERSION", "generate", "ensure_synthetic", "synthetic_name", "render_shot", "HQ_SETS"]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
HQ_SETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
_STREAM = {"train": 10, "lfw": 11, "cfp_fp": 12, "agedb_30": 13, "calfw": 14, "cplfw": 15,
           "tinyface": 16, "scface": 17, "IJBB": 18, "IJBC": 19, "camera": 20}
# image A / image B nuisance of each HQ set: cfp_fp frontal vs half-profile, agedb/calfw an age gap
_HQ_STYLE = {
    "lfw": ({}, {}),
    "cfp_fp": ({"yaw_deg": 3.0}, {"yaw_range": (20.0, 35.0)}),
    "agedb_30": ({"age_shift": -0.2, "expression": 1.5}, {"age_shift": 0.4, "expression": 1.5}),
    "calfw": ({"age_shift": -0.1}, {"age_shift": 0.3}),
    "cplfw": ({"yaw_deg": 6.0}, {"yaw_range": (15.0, 30.0)}),
}
_LOOKALIKE_IMPOSTORS = ("calfw", "cplfw")
_SCFACE_PX = {1: (10, 14), 2: (20, 28), 3: (40, 56)}  # face size in pixels per distance (1 = farthest)


def _defaults() -> dict[str, Any]:
    """Generation parameters; ``None`` sizes scale with ``eval_identities`` (see :func:`_resolve`)."""
    return {"identities": 300, "images_per_identity": 20, "eval_identities": 100, "seed": 0, "hq_pairs": None,
            "tinyface_probes": 2, "tinyface_gallery": 2, "tinyface_distractors": None, "scface_subjects": None,
            "ijb_templates": 3, "ijb_media": 2, "ijb_frames": 2, "ijb_max_pairs": 100_000}


def _resolve(p: dict[str, Any]) -> dict[str, Any]:
    """Fill the sizes left ``None``: 3 HQ pairs, 4 TinyFace distractors per evaluation identity
    (capped at 300 pairs), SCface on up to 50 subjects (the real set has 130)."""
    e = p["eval_identities"]
    return {**p, "hq_pairs": min(300, 3 * e) // 2 * 2 if p["hq_pairs"] is None else p["hq_pairs"],
            "tinyface_distractors": 4 * e if p["tinyface_distractors"] is None else p["tinyface_distractors"],
            "scface_subjects": min(50, e) if p["scface_subjects"] is None else p["scface_subjects"]}


def synthetic_name(identities: int, images_per_identity: int, eval_identities: int, seed: int) -> str:
    """Folder name of a synthetic set under ``data.synthetic_dir``."""
    return f"ids{identities}x{images_per_identity}-eval{eval_identities}-seed{seed}"


# ---------------------------------------------------------------- shots: one image each

def render_shot(seed: int, shot: tuple) -> Any:
    """Render one shot ``(kind, identity, stream, index, options)``; the result depends on nothing else."""
    kind, number, stream, index, opts = shot
    idn = sf.make_identity(seed, number)
    rng = np.random.default_rng([seed, stream, number, index])
    if kind == "aligned":  # training and HQ pairs: RGB-order JPEG for .rec/.bin
        return encode_jpeg(sf.render_aligned(idn, sf.sample_variation(rng, **opts)), 95)
    if kind == "tiny":  # TinyFace: (original low-res file, 112x112 aligned upscaled copy), plain JPEGs
        var = sf.sample_variation(rng, yaw_deg=15, pitch_deg=10, light=1.5, noise=(1, 3))
        lo, hi = opts["px"]
        small = sf.degrade(sf.render_aligned(idn, var), int(rng.integers(lo, hi + 1)), rng, upscale=False,
                           **opts.get("degrade", {}))
        return _jpeg(small, 90), _jpeg(cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC), 95)
    if kind == "scface":
        return _jpeg(_scface(idn, rng, seed, **opts), 95)
    if kind == "loose":
        return _loose(idn, seed, stream, number, opts)
    raise ValueError(f"unknown synthetic shot kind {kind!r}")


def _jpeg(bgr: np.ndarray, quality: int) -> bytes:
    return encode_jpeg(bgr, quality)  # OpenCV BGR in = an ordinary JPEG on disk, read back by cv2.imread


def _scface(idn: sf.Identity, rng: np.random.Generator, seed: int, camera: int, distance: int) -> np.ndarray:
    """A surveillance still (camera above the head, per-camera optics) or the frontal mugshot (camera 0)."""
    if camera == 0:
        var = sf.sample_variation(rng, yaw_deg=2, pitch_deg=2, roll_deg=1, expression=0.2, light=0.3,
                                  noise=(0.3, 1.0), align_noise=0.3)
        return sf.render_aligned(idn, var)
    cam = np.random.default_rng([seed, _STREAM["camera"], camera])  # fixed per camera
    pitch = {1: 8.0, 2: 14.0, 3: 22.0}[distance]
    var = sf.sample_variation(rng, yaw_deg=12, pitch_deg=3, light=1.3, noise=(1, 3))
    var = dataclasses.replace(var, pitch=math.radians(pitch + float(rng.normal(0, 3))),
                              cast=tuple(np.exp(cam.normal(0, 0.12, 3)).tolist()))
    img = sf.render_aligned(idn, var)
    if camera >= 6:  # infrared: one channel, skin bright, contrast stretched
        grey = img @ np.array([0.1, 0.3, 0.6]) * 1.25 + 10
        img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    lo, hi = _SCFACE_PX[distance]
    blur = cam.uniform(0.2, 0.6)
    return sf.degrade(img, int(rng.integers(lo, hi + 1)), rng, blur=(blur, blur + 0.4), jpeg=(30, 75), noise=(1, 4))


def _loose(idn: sf.Identity, seed: int, stream: int, number: int, opts: dict) -> tuple[bytes, np.ndarray, float]:
    """IJB loose crop: the face at a random similarity in a 150-250 px image; frames of a media share a
    base variation (a video). Returns (JPEG, exact 5 landmarks, detector score)."""
    media_rng = np.random.default_rng([seed, stream, number, opts["media"]])
    rng = np.random.default_rng([seed, stream, number, opts["media"], opts["frame"]])
    var = sf.sample_variation(media_rng, yaw_deg=15, pitch_deg=8, roll_deg=8, light=1.3)
    var = dataclasses.replace(var, yaw=var.yaw + float(rng.normal(0, 0.05)),
                              mouth_open=max(0.0, var.mouth_open + float(rng.normal(0, 0.1))),
                              background=int(rng.integers(2 ** 31)))
    size = 2 * int(media_rng.integers(75, 126))
    scale = media_rng.uniform(0.55, 0.75) * size / 112 * math.exp(rng.normal(0, 0.02))
    angle = var.roll + float(rng.normal(0, 0.02))
    centre = size / 2 + media_rng.normal(0, 0.04 * size, 2) + rng.normal(0, 1, 2)
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    frame = np.concatenate([rot, (centre - rot @ [55.5, 55.5])[:, None]], 1)
    img, marks = sf.render(idn, var, frame, (size, size), oversample=1)
    quality = media_rng.random()
    score = 0.95 + 0.05 * rng.random()
    if quality < 0.6:  # 35% medium, 25% low quality media
        face_px = media_rng.uniform(16, 32) if quality < 0.25 else media_rng.uniform(36, 64)
        img = sf.degrade(img, max(8, round(size * face_px / (112 * scale))), rng,
                         jpeg=(20, 50) if quality < 0.25 else (50, 85))
        score = 0.5 + 0.3 * rng.random() if quality < 0.25 else 0.8 + 0.15 * rng.random()
    return _jpeg(img, 92), marks, score


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _render_group(args: tuple[int, list[tuple]]) -> list:
    seed, shots = args
    return [render_shot(seed, shot) for shot in shots]


class _Renderer:
    """Renders groups of shots, results in order, in ``workers`` fresh (``spawn``) processes.

    Not ``fork``: a child forked from a process whose OpenCV thread pool has run deadlocks. So, as
    for any multiprocessing code, a script calling this at top level needs an ``if __name__ ==
    "__main__":`` guard; without one the pool breaks with BrokenProcessPool.
    """

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker)

    def map(self, seed: int, groups: list[list[tuple]]) -> Iterator[list]:
        jobs = [(seed, g) for g in groups]
        return self.pool.map(_render_group, jobs) if self.pool else map(_render_group, jobs)

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------- the evaluation plan

class _Plan:
    """Every evaluation shot by key, with per-(stream, identity) image counters."""

    def __init__(self) -> None:
        self.shots: dict[tuple, tuple] = {}
        self._next: dict[tuple[int, int], int] = {}

    def add(self, key: tuple, kind: str, number: int, stream: int, opts: dict | None = None,
            index: int | None = None) -> None:
        if index is None:
            index = self._next.get((stream, number), 0)
            self._next[(stream, number)] = index + 1
        self.shots[key] = (kind, number, stream, index, opts or {})

    def render(self, renderer: _Renderer, seed: int) -> dict[tuple, Any]:
        by_identity: dict[int, list[tuple]] = {}
        for key, shot in self.shots.items():
            by_identity.setdefault(shot[1], []).append(key)
        numbers = sorted(by_identity)
        groups = [[self.shots[k] for k in by_identity[n]] for n in numbers]
        results: dict[tuple, Any] = {}
        for n, outputs in zip(numbers, renderer.map(seed, groups)):
            results.update(zip(by_identity[n], outputs))
        return results


def _plan_hq(plan: _Plan, p: dict, eval_ids: list[int]) -> None:
    coarse = np.stack([sf.make_identity(p["seed"], n).coarse for n in eval_ids])
    for name in HQ_SETS:
        stream, (style_a, style_b) = _STREAM[name], _HQ_STYLE[name]
        rng = np.random.default_rng([p["seed"], stream])
        for pair in range(p["hq_pairs"]):
            j = (pair // 2) % len(eval_ids)
            if pair % 2 == 0:
                k = j
            elif name in _LOOKALIKE_IMPOSTORS:  # a look-alike (same skin/hair) impostor, as CALFW/CPLFW do
                k = int(rng.choice(np.argsort(np.linalg.norm(coarse - coarse[j], axis=1))[1:4]))
            else:
                k = int((j + rng.integers(1, len(eval_ids))) % len(eval_ids))
            plan.add((name, pair, 0), "aligned", eval_ids[j], stream, style_a)
            plan.add((name, pair, 1), "aligned", eval_ids[k], stream, style_b)


def _plan_tinyface(plan: _Plan, p: dict, eval_ids: list[int], first_distractor: int) -> None:
    stream = _STREAM["tinyface"]
    gallery_q = {"blur": (0.0, 0.5), "jpeg": (60, 90), "noise": (0.5, 2.0)}
    for j, number in enumerate(eval_ids):
        for n in range(p["tinyface_probes"]):
            plan.add(("Probe", f"{j + 1}_{n + 1}.jpg"), "tiny", number, stream, {"px": (12, 24)})
        for n in range(p["tinyface_gallery"]):
            name = f"{j + 1}_{p['tinyface_probes'] + n + 1}.jpg"
            plan.add(("Gallery_Match", name), "tiny", number, stream, {"px": (32, 64), "degrade": gallery_q})
    for k in range(p["tinyface_distractors"]):
        plan.add(("Gallery_Distractor", f"{100000 + k // 2}_{k % 2 + 1}.jpg"), "tiny", first_distractor + k // 2,
                 stream, {"px": (14, 64)})


def _plan_scface(plan: _Plan, p: dict, eval_ids: list[int]) -> None:
    for j, number in enumerate(eval_ids[:p["scface_subjects"]]):
        plan.add(("scface", f"{j + 1:03d}_frontal.jpg"), "scface", number, _STREAM["scface"],
                 {"camera": 0, "distance": 0}, index=0)
        for camera in range(1, 9):
            for distance in (1, 2, 3):
                plan.add(("scface", f"{j + 1:03d}_cam{camera}_{distance}.jpg"), "scface", number, _STREAM["scface"],
                         {"camera": camera, "distance": distance}, index=10 * camera + distance)


def _plan_ijb(plan: _Plan, p: dict, eval_ids: list[int], which: str) -> list[tuple[str, int, int, int]]:
    """Templates of 1..ijb_media media of 1..ijb_frames frames; returns (image, template, media, identity)."""
    stream = _STREAM[which]
    rng = np.random.default_rng([p["seed"], stream])
    faces, template, media = [], 0, 0
    for number in eval_ids:
        for _ in range(p["ijb_templates"]):
            template += 1
            for _ in range(int(rng.integers(1, p["ijb_media"] + 1))):
                media += 1
                for frame in range(int(rng.integers(1, p["ijb_frames"] + 1))):
                    name = f"{len(faces) + 1}.jpg"
                    plan.add((which, name), "loose", number, stream, {"media": media, "frame": frame}, index=len(faces))
                    faces.append((name, template, media, number))
    return faces


# ---------------------------------------------------------------- writers of the on-disk layouts

def _write_mat(path: Path, names: list[str], ids: list[int], names_key: str, ids_key: str) -> None:
    """MATLAB v5 file: ``names_key`` a cell column of file names, ``ids_key`` an int column."""
    import scipy.io

    cells = np.empty((len(names), 1), dtype=object)
    cells[:, 0] = names
    buf = io.BytesIO()
    scipy.io.savemat(buf, {names_key: cells, ids_key: np.asarray(ids, np.int32).reshape(-1, 1)})
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by qgface (synthetic)".ljust(116)  # no timestamp: reproducible
    atomic_write_bytes(path, bytes(data))


def _write_tinyface(out: Path, results: dict[tuple, Any]) -> dict[str, int]:
    root, aligned = out / "tinyface" / "Testing_Set", out / "aligned_pad_0.1_pad_high"
    listed: dict[str, list[str]] = {"Probe": [], "Gallery_Match": [], "Gallery_Distractor": []}
    for key, value in results.items():
        if key[0] in listed:
            listed[key[0]].append(key[1])
            for folder, data in zip((root, aligned), value):
                (folder / key[0]).mkdir(parents=True, exist_ok=True)
                (folder / key[0] / key[1]).write_bytes(data)
    protocol_files = (("Probe", "probe_img_ID_pairs.mat", "probe_set", "probe_ids"),
                      ("Gallery_Match", "gallery_match_img_ID_pairs.mat", "gallery_set", "gallery_ids"))
    for folder, mat, names_key, ids_key in protocol_files:
        names = listed[folder]
        _write_mat(root / mat, names, [int(n.split("_")[0]) for n in names], names_key, ids_key)
    return {f"tinyface_{k.lower()}": len(v) for k, v in listed.items()}


def _write_scface(out: Path, results: dict[tuple, Any]) -> dict[str, int]:
    folder = out / "scface" / "aligned"
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(k[1] for k in results if k[0] == "scface")
    for name in names:
        (folder / name).write_bytes(results[("scface", name)])
    protocol = [n for n in names if "frontal" in n or int(n.split("_cam")[1][0]) <= 5]  # IR cameras 6-8 excluded
    atomic_write_text(out / "scface" / "all.txt", "".join(f"{n}\n" for n in protocol))
    return {"scface_images": len(names), "scface_protocol_images": len(protocol)}


def _write_ijb(out: Path, which: str, faces: list[tuple[str, int, int, int]], results: dict[tuple, Any],
               max_pairs: int, seed: int) -> dict[str, int]:
    prefix, root = which.lower(), out / which
    (root / "loose_crop").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    tid_mid, pts = [], []
    for name, template, media, _ in faces:
        data, marks, score = results[(which, name)]
        (root / "loose_crop" / name).write_bytes(data)
        tid_mid.append(f"{name} {template} {media}\n")
        pts.append(" ".join([name, *(f"{v:.2f}" for v in marks.ravel()), f"{score:.4f}"]) + "\n")
    owner = {template: number for _, template, _, number in faces}
    templates = sorted(owner)
    pairs = [(a, b) for i, a in enumerate(templates) for b in templates[i + 1:]]
    genuine = [pr for pr in pairs if owner[pr[0]] == owner[pr[1]]]
    impostor = [pr for pr in pairs if owner[pr[0]] != owner[pr[1]]]
    if len(pairs) > max_pairs:
        rng = np.random.default_rng([seed, _STREAM[which], 1])
        keep = rng.choice(len(impostor), max(0, max_pairs - len(genuine)), replace=False)
        impostor = [impostor[i] for i in sorted(keep)]
    lines = sorted([(a, b, 1) for a, b in genuine] + [(a, b, 0) for a, b in impostor])
    atomic_write_text(root / "meta" / f"{prefix}_face_tid_mid.txt", "".join(tid_mid))
    atomic_write_text(root / "meta" / f"{prefix}_name_5pts_score.txt", "".join(pts))
    atomic_write_text(root / "meta" / f"{prefix}_template_pair_label.txt", "".join(f"{a} {b} {c}\n" for a, b, c in lines))
    return {f"{prefix}_images": len(faces), f"{prefix}_templates": len(templates),
            f"{prefix}_genuine_pairs": len(genuine), f"{prefix}_impostor_pairs": len(impostor)}


def generate(out_dir: str | os.PathLike, *, identities: int = 300, images_per_identity: int = 20,
             eval_identities: int = 100, seed: int = 0, hq_pairs: int | None = None, tinyface_probes: int = 2,
             tinyface_gallery: int = 2, tinyface_distractors: int | None = None, scface_subjects: int | None = None,
             ijb_templates: int = 3, ijb_media: int = 2, ijb_frames: int = 2, ijb_max_pairs: int = 100_000,
             workers: int = 2) -> None:
    """Write the whole synthetic set into the empty (or new) folder ``out_dir``; ``synthetic.json`` last.

    Training identities are ``0..identities-1``; every benchmark uses the next ``eval_identities``
    (TinyFace distractors come after those), so evaluation never sees a training identity.
    ``hq_pairs`` must be even (half genuine); sizes left ``None`` scale with ``eval_identities``
    (defaults: 300 pairs per HQ set, 400 TinyFace distractors, 50 SCface subjects).
    ``workers`` processes render (1 = in this process).
    """
    p = _resolve({k: v for k, v in locals().items() if k in _defaults()})
    hq_pairs = p["hq_pairs"]
    if identities < 1 or images_per_identity < 1 or eval_identities < 2 or hq_pairs < 2 or hq_pairs % 2:
        raise ValueError(f"synthetic set: need identities >= 1, images_per_identity >= 1, eval_identities >= 2 and an even "
                         f"hq_pairs >= 2, got {p}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: generate the synthetic set into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    renderer = _Renderer(workers)
    try:
        train = [[("aligned", n, _STREAM["train"], k, {}) for k in range(images_per_identity)] for n in range(identities)]
        items = ((jpeg, n) for n, group in enumerate(renderer.map(seed, train)) for jpeg in group)
        num_images, num_ids = write_insightface_rec(out / "train.rec", out / "train.idx", items)
        counts = {"train_images": num_images, "train_identities": num_ids}
        log.info("synthetic training set: %d images of %d identities (%.1f s)", num_images, num_ids,
                 time.perf_counter() - start)
        eval_ids = list(range(identities, identities + eval_identities))
        plan = _Plan()
        _plan_hq(plan, p, eval_ids)
        _plan_tinyface(plan, p, eval_ids, identities + eval_identities)
        _plan_scface(plan, p, eval_ids)
        ijb = {which: _plan_ijb(plan, p, eval_ids, which) for which in ("IJBB", "IJBC")}
        results = plan.render(renderer, seed)
    finally:
        renderer.close()
    for name in HQ_SETS:
        images = [results[(name, pair, side)] for pair in range(hq_pairs) for side in (0, 1)]
        save_bin(out / f"{name}.bin", images, [pair % 2 == 0 for pair in range(hq_pairs)])
        counts[f"{name}_pairs"] = hq_pairs
    counts.update(_write_tinyface(out, results))
    counts.update(_write_scface(out, results))
    for which, faces in ijb.items():
        counts.update(_write_ijb(out, which, faces, results, ijb_max_pairs, seed))
    os.sync()  # the image files above are plain writes: make them durable before the completion marker
    summary = {"generator_version": GENERATOR_VERSION, "parameters": p, "counts": counts}
    atomic_write_text(out / "synthetic.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("synthetic set complete in %s (%.1f s): %s", out, time.perf_counter() - start, counts)


# ---------------------------------------------------------------- the cache used by training and evaluation

def _is_complete(folder: Path, params: dict[str, Any]) -> bool:
    try:
        summary = json.loads((folder / "synthetic.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("generator_version") == GENERATOR_VERSION and summary.get("parameters") == params


def ensure_synthetic(cfg: Any) -> Path:
    """The synthetic set for ``cfg.data``'s parameters under ``cfg.data.synthetic_dir``, generated if missing.

    Concurrent callers (ranks, array tasks) serialise on a ``fcntl.flock`` lock file; one generates
    into a temporary folder that is renamed into place, the others then find it complete.
    """
    d = cfg.data
    params = _resolve({**_defaults(), "identities": d.synthetic_identities,
                       "images_per_identity": d.synthetic_images_per_identity,
                       "eval_identities": d.synthetic_eval_identities, "seed": d.synthetic_seed})
    name = synthetic_name(params["identities"], params["images_per_identity"], params["eval_identities"], params["seed"])
    root = Path(d.synthetic_dir)
    final = root / name
    if _is_complete(final, params):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _is_complete(final, params):
                return final
            for stale in root.glob(f".{name}.tmp-*"):  # left by a killed generation (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            log.info("generating the synthetic dataset %s (about a minute)", final)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
            try:
                generate(tmp, **{k: params[k] for k in _defaults()})
                if final.exists():  # an incomplete or outdated set: replace it
                    shutil.rmtree(final)
                os.rename(tmp, final)
                fsync_dir(root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final
