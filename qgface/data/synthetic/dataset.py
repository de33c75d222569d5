"""The synthetic dataset as a whole: which shots each benchmark needs, :func:`generate`, and the cache.

:func:`generate` writes a training set (InsightFace ``train.rec/.idx``, mostly high quality like
MS1MV2; docs/method.md §2 makes the low-quality views during training) and the evaluation data root of
docs/method.md §7: five HQ ``.bin`` pair sets, TinyFace, SCface, IJB-B, IJB-C and IJB-S, on identities disjoint
from training. :func:`ensure_synthetic` caches one such set per parameter combination under
``cfg.data.synthetic_dir`` (file lock, temporary folder + rename; ``synthetic.json`` written last).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from qgface.atomic import atomic_write_text, fsync_dir
from qgface.data.binfile import save_bin
from qgface.data.insightface_rec import write_insightface_rec
from qgface.data.synthetic.faces import make_identity
from qgface.data.synthetic.layouts import IJBS_PROBE_VIDEO_BASE, write_ijb, write_ijbs, write_scface, write_tinyface
from qgface.data.synthetic.shots import STREAM, Plan, Renderer
from qgface.vocab import synthetic
from qgface.vocab.benchmarks import HQ_SETS

__all__ = ["GENERATOR_VERSION", "HQ_SETS", "generate", "ensure_synthetic", "synthetic_name"]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 4  # 2: SCface all.txt in the distributed layout; 3: IJB 1:N lists, >= 10k impostor pairs; 4: IJB-S
# image A / image B nuisance of each HQ set: cfp_fp frontal vs half-profile, agedb/calfw an age gap
_HQ_STYLE = {
    "lfw": ({}, {}),
    "cfp_fp": ({"yaw_deg": 3.0}, {"yaw_range": (20.0, 35.0)}),
    "agedb_30": ({"age_shift": -0.2, "expression": 1.5}, {"age_shift": 0.4, "expression": 1.5}),
    "calfw": ({"age_shift": -0.1}, {"age_shift": 0.3}),
    "cplfw": ({"yaw_deg": 6.0}, {"yaw_range": (15.0, 30.0)}),
}
_LOOKALIKE_IMPOSTORS = ("calfw", "cplfw")


def _defaults() -> dict[str, Any]:
    """Generation parameters; ``None`` sizes scale with ``eval_identities`` (see :func:`_resolve`)."""
    return {
        "identities": synthetic.IDENTITIES,
        "images_per_identity": synthetic.IMAGES_PER_IDENTITY,
        "eval_identities": synthetic.EVAL_IDENTITIES,
        "seed": 0,
        "hq_pairs": None,
        "tinyface_probes": 2,
        "tinyface_gallery": 2,
        "tinyface_distractors": None,
        "scface_subjects": None,
        "ijb_templates": None,
        "ijb_media": 2,
        "ijb_frames": 2,
        "ijb_max_pairs": 100_000,
    }


IJB_MIN_IMPOSTORS = 10_000
"""Impostor template pairs the synthetic IJB sets need so that TAR at FAR 1e-4 is resolvable (docs/method.md §7.5)."""


def _ijb_templates(eval_identities: int) -> int:
    """Templates per identity: at least 3, and enough that the T^2 E (E - 1) / 2 impostor pairs of E
    identities reach :data:`IJB_MIN_IMPOSTORS` (3 for 100 identities, 4 for the demo's 40)."""
    t = 3
    while t * t * eval_identities * (eval_identities - 1) // 2 < IJB_MIN_IMPOSTORS and t < 100:
        t += 1
    return t


def _resolve(p: dict[str, Any]) -> dict[str, Any]:
    """Fill the sizes left ``None``: 3 HQ pairs, 4 TinyFace distractors per evaluation identity
    (capped at 300 pairs), SCface on up to 50 subjects (the real set has 130), IJB templates per
    identity by :func:`_ijb_templates`."""
    e = p["eval_identities"]
    return {
        **p,
        "ijb_templates": _ijb_templates(e) if p["ijb_templates"] is None else p["ijb_templates"],
        "hq_pairs": min(300, 3 * e) // 2 * 2 if p["hq_pairs"] is None else p["hq_pairs"],
        "tinyface_distractors": 4 * e if p["tinyface_distractors"] is None else p["tinyface_distractors"],
        "scface_subjects": min(50, e) if p["scface_subjects"] is None else p["scface_subjects"],
    }


def synthetic_name(identities: int, images_per_identity: int, eval_identities: int, seed: int) -> str:
    """Folder name of a synthetic set under ``data.synthetic_dir``."""
    return f"ids{identities}x{images_per_identity}-eval{eval_identities}-seed{seed}"


# ---------------------------------------------------------------- the evaluation plan of every benchmark


def _plan_hq(plan: Plan, p: dict, eval_ids: list[int]) -> None:
    coarse = np.stack([make_identity(p["seed"], n).coarse for n in eval_ids])
    for name in HQ_SETS:
        stream, (style_a, style_b) = STREAM[name], _HQ_STYLE[name]
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


def _plan_tinyface(plan: Plan, p: dict, eval_ids: list[int], first_distractor: int) -> None:
    stream = STREAM["tinyface"]
    gallery_q = {"blur": (0.0, 0.5), "jpeg": (60, 90), "noise": (0.5, 2.0)}
    for j, number in enumerate(eval_ids):
        for n in range(p["tinyface_probes"]):
            plan.add(("Probe", f"{j + 1}_{n + 1}.jpg"), "tiny", number, stream, {"px": (12, 24)})
        for n in range(p["tinyface_gallery"]):
            name = f"{j + 1}_{p['tinyface_probes'] + n + 1}.jpg"
            plan.add(("Gallery_Match", name), "tiny", number, stream, {"px": (32, 64), "degrade": gallery_q})
    for k in range(p["tinyface_distractors"]):
        plan.add(
            ("Gallery_Distractor", f"{100000 + k // 2}_{k % 2 + 1}.jpg"),
            "tiny",
            first_distractor + k // 2,
            stream,
            {"px": (14, 64)},
        )


def _plan_scface(plan: Plan, p: dict, eval_ids: list[int]) -> None:
    for j, number in enumerate(eval_ids[: p["scface_subjects"]]):
        plan.add(
            ("scface", f"{j + 1:03d}_frontal.jpg"),
            "scface",
            number,
            STREAM["scface"],
            {"camera": 0, "distance": 0},
            index=0,
        )
        for camera in range(1, 9):
            for distance in (1, 2, 3):
                plan.add(
                    ("scface", f"{j + 1:03d}_cam{camera}_{distance}.jpg"),
                    "scface",
                    number,
                    STREAM["scface"],
                    {"camera": camera, "distance": distance},
                    index=10 * camera + distance,
                )


def _plan_ijb(plan: Plan, p: dict, eval_ids: list[int], which: str) -> list[tuple[str, int, int, int]]:
    """Templates of 1..ijb_media media of 1..ijb_frames frames; returns (image, template, media, identity)."""
    stream = STREAM[which]
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


IJBS_SUBJECTS = 20
"""synthetic IJB-S subjects (at most; the first evaluation identities): 3 photos, a 3-frame gallery video
and 2 shared 3-frame probe videos each, about 240 images"""


def _plan_ijbs(plan: Plan, eval_ids: list[int]) -> tuple[list[int], set[str]]:
    """Subject PIDs 1..S: photos ``img_<100000 + 10 PID + k>``, gallery video ``1000 + PID`` alone, and
    probe video ``2000 + m`` showing subjects m and m + 1 (mod S). Returns (PIDs, failed frames): the
    last frame of probe video 2000 + 1 of PID 1 is an alignment failure (listed, never imaged)."""
    stream, count = STREAM["IJBS"], min(IJBS_SUBJECTS, len(eval_ids) // 2 * 2)
    pids = list(range(1, count + 1))
    for pid, number in zip(pids, eval_ids):
        for k in range(3):
            plan.add(
                ("IJBS", f"{pid}/img_{100000 + 10 * pid + k}.jpg"), "ijbs", number, stream, {"video": 0, "frame": k}
            )
        videos = [1000 + pid, IJBS_PROBE_VIDEO_BASE + pid, IJBS_PROBE_VIDEO_BASE + (pid - 2) % count + 1]
        for video in videos:
            for frame in range(3):
                plan.add(
                    ("IJBS", f"{pid}/videos_{video}_{10 * frame}.jpg"),
                    "ijbs",
                    number,
                    stream,
                    {"video": video, "frame": frame},
                )
    return pids, {f"1/videos_{IJBS_PROBE_VIDEO_BASE + 1}_20.jpg"}


def generate(
    out_dir: str | os.PathLike,
    *,
    identities: int = synthetic.IDENTITIES,
    images_per_identity: int = synthetic.IMAGES_PER_IDENTITY,
    eval_identities: int = synthetic.EVAL_IDENTITIES,
    seed: int = 0,
    hq_pairs: int | None = None,
    tinyface_probes: int = 2,
    tinyface_gallery: int = 2,
    tinyface_distractors: int | None = None,
    scface_subjects: int | None = None,
    ijb_templates: int | None = None,
    ijb_media: int = 2,
    ijb_frames: int = 2,
    ijb_max_pairs: int = 100_000,
    workers: int = 2,
) -> None:
    """Write the whole synthetic set into the empty (or new) folder ``out_dir``; ``synthetic.json`` last.

    Training identities are ``0..identities-1``; every benchmark uses the next ``eval_identities``
    (TinyFace distractors come after those), so evaluation never sees a training identity.
    ``hq_pairs`` must be even (half genuine); sizes left ``None`` scale with ``eval_identities``
    (defaults: 300 pairs per HQ set, 400 TinyFace distractors, 50 SCface subjects, 3 IJB templates
    per identity, more for fewer identities so that there are >= 10,000 impostor pairs).
    ``workers`` processes render (1 = in this process).
    """
    p = _resolve({k: v for k, v in locals().items() if k in _defaults()})
    hq_pairs = p["hq_pairs"]
    if identities < 1 or images_per_identity < 1 or eval_identities < 2 or hq_pairs < 2 or hq_pairs % 2:
        raise ValueError(
            f"synthetic set: need identities >= 1, images_per_identity >= 1, eval_identities >= 2 and an even "
            f"hq_pairs >= 2, got {p}"
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: generate the synthetic set into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    renderer = Renderer(workers)
    try:
        train = [
            [("aligned", n, STREAM["train"], k, {}) for k in range(images_per_identity)] for n in range(identities)
        ]
        items = ((jpeg, n) for n, group in enumerate(renderer.map(seed, train)) for jpeg in group)
        num_images, num_ids = write_insightface_rec(out / "train.rec", out / "train.idx", items)
        counts = {"train_images": num_images, "train_identities": num_ids}
        log.info(
            "synthetic training set: %d images of %d identities (%.1f s)",
            num_images,
            num_ids,
            time.perf_counter() - start,
        )
        eval_ids = list(range(identities, identities + eval_identities))
        plan = Plan()
        _plan_hq(plan, p, eval_ids)
        _plan_tinyface(plan, p, eval_ids, identities + eval_identities)
        _plan_scface(plan, p, eval_ids)
        ijb = {which: _plan_ijb(plan, p, eval_ids, which) for which in ("IJBB", "IJBC")}
        ijbs_subjects, ijbs_failed = _plan_ijbs(plan, eval_ids)
        results = plan.render(renderer, seed)
    finally:
        renderer.close()
    for name in HQ_SETS:
        images = [results[(name, pair, side)] for pair in range(hq_pairs) for side in (0, 1)]
        save_bin(out / f"{name}.bin", images, [pair % 2 == 0 for pair in range(hq_pairs)])
        counts[f"{name}_pairs"] = hq_pairs
    counts.update(write_tinyface(out, results))
    counts.update(write_scface(out, results))
    for which, faces in ijb.items():
        counts.update(write_ijb(out, which, faces, results, ijb_max_pairs, seed))
    counts.update(write_ijbs(out, ijbs_subjects, results, ijbs_failed))
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


def generate_training_set(
    out_dir: str | os.PathLike, *, identities: int, images_per_identity: int, seed: int = 0, workers: int = 1
) -> None:
    """:func:`generate` with the smallest evaluation sets it makes (2 identities, 2 HQ pairs, one TinyFace
    probe, 2 SCface subjects, 10 IJB pairs): for tests and checks that train, or evaluate only in passing."""
    generate(
        out_dir,
        identities=identities,
        images_per_identity=images_per_identity,
        eval_identities=2,
        seed=seed,
        hq_pairs=2,
        tinyface_probes=1,
        tinyface_gallery=1,
        tinyface_distractors=1,
        scface_subjects=2,
        ijb_templates=1,
        ijb_media=1,
        ijb_frames=1,
        ijb_max_pairs=10,
        workers=workers,
    )


def ensure_synthetic(cfg: Any) -> Path:
    """The synthetic set for ``cfg.data``'s parameters under ``cfg.data.synthetic_dir``, generated if missing.

    Concurrent callers (ranks, array tasks) serialise on a ``fcntl.flock`` lock file; one generates
    into a temporary folder that is renamed into place, the others then find it complete.
    """
    d = cfg.data
    params = _resolve(
        {
            **_defaults(),
            "identities": d.synthetic_identities,
            "images_per_identity": d.synthetic_images_per_identity,
            "eval_identities": d.synthetic_eval_identities,
            "seed": d.synthetic_seed,
        }
    )
    name = synthetic_name(
        params["identities"], params["images_per_identity"], params["eval_identities"], params["seed"]
    )
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
