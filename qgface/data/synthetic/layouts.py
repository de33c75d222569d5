"""Writers of the benchmark layouts (docs/method.md §7): TinyFace, SCface and IJB-B/C from rendered shots.

Each takes the dataset folder and the rendered results by shot key, writes the files the real
benchmark ships (images, ``.mat`` protocol files, IJB meta text files) and returns counts for
``synthetic.json``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from qgface.atomic import atomic_write_bytes, atomic_write_text
from qgface.data.synthetic.faces import TEMPLATE
from qgface.data.synthetic.shots import STREAM
from qgface.vocab.benchmarks import TINYFACE_ALIGNED_DIR


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


def write_tinyface(out: Path, results: dict[tuple, Any]) -> dict[str, int]:
    root, aligned = out / "tinyface" / "Testing_Set", out / TINYFACE_ALIGNED_DIR
    listed: dict[str, list[str]] = {"Probe": [], "Gallery_Match": [], "Gallery_Distractor": []}
    for key, value in results.items():
        if key[0] in listed:
            listed[key[0]].append(key[1])
            for folder, data in zip((root, aligned), value):
                (folder / key[0]).mkdir(parents=True, exist_ok=True)
                (folder / key[0] / key[1]).write_bytes(data)
    protocol_files = (
        ("Probe", "probe_img_ID_pairs.mat", "probe_set", "probe_ids"),
        ("Gallery_Match", "gallery_match_img_ID_pairs.mat", "gallery_set", "gallery_ids"),
    )
    for folder, mat, names_key, ids_key in protocol_files:
        names = listed[folder]
        _write_mat(root / mat, names, [int(n.split("_")[0]) for n in names], names_key, ids_key)
    return {f"tinyface_{k.lower()}": len(v) for k, v in listed.items()}


def write_scface(out: Path, results: dict[tuple, Any]) -> dict[str, int]:
    """The distributed ``all.txt`` layout: every image (infrared cameras too), one tab-separated line each,
    the name without extension then the five landmarks (x, y) of the aligned crop (the face template)."""
    folder = out / "scface" / "aligned"
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(k[1] for k in results if k[0] == "scface")
    for name in names:
        (folder / name).write_bytes(results[("scface", name)])
    marks = "\t".join(f"{v:.2f}" for v in TEMPLATE.ravel())
    atomic_write_text(out / "scface" / "all.txt", "".join(f"{Path(n).stem}\t{marks}\n" for n in names))
    protocol = [n for n in names if "frontal" in n or int(n.split("_cam")[1][0]) <= 5]  # IR cameras 6-8 excluded
    return {"scface_images": len(names), "scface_protocol_images": len(protocol)}


def write_ijb(
    out: Path, which: str, faces: list[tuple[str, int, int, int]], results: dict[tuple, Any], max_pairs: int, seed: int
) -> dict[str, int]:
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
    pairs = [(a, b) for i, a in enumerate(templates) for b in templates[i + 1 :]]
    genuine = [pr for pr in pairs if owner[pr[0]] == owner[pr[1]]]
    impostor = [pr for pr in pairs if owner[pr[0]] != owner[pr[1]]]
    if len(pairs) > max_pairs:
        rng = np.random.default_rng([seed, STREAM[which], 1])
        keep = rng.choice(len(impostor), max(0, max_pairs - len(genuine)), replace=False)
        impostor = [impostor[i] for i in sorted(keep)]
    lines = sorted([(a, b, 1) for a, b in genuine] + [(a, b, 0) for a, b in impostor])
    atomic_write_text(root / "meta" / f"{prefix}_face_tid_mid.txt", "".join(tid_mid))
    atomic_write_text(root / "meta" / f"{prefix}_name_5pts_score.txt", "".join(pts))
    atomic_write_text(
        root / "meta" / f"{prefix}_template_pair_label.txt", "".join(f"{a} {b} {c}\n" for a, b, c in lines)
    )
    counts = _write_ijb_1n(root / "meta", prefix, faces)
    return {
        f"{prefix}_images": len(faces),
        f"{prefix}_templates": len(templates),
        f"{prefix}_genuine_pairs": len(genuine),
        f"{prefix}_impostor_pairs": len(impostor),
        **counts,
    }


def _write_ijb_1n(meta: Path, prefix: str, faces: list[tuple[str, int, int, int]]) -> dict[str, int]:
    """The 1:N lists (CSV with a header, one row per image): each identity's first template joins
    gallery 1 (first half of the identities) or gallery 2 (second half); its other templates are probes."""
    galleries = ("S1", "S2") if prefix == "ijbb" else ("G1", "G2")
    subjects = sorted({number for *_, number in faces})
    first_template: dict[int, int] = {}
    for _, template, _, number in faces:
        first_template.setdefault(number, template)
    half = {number: int(k >= len(subjects) / 2) for k, number in enumerate(subjects)}
    rows: dict[str, list[str]] = {galleries[0]: [], galleries[1]: [], "probe_mixed": []}
    for name, template, _, number in faces:
        role = galleries[half[number]] if first_template[number] == template else "probe_mixed"
        rows[role].append(f"{template},{number},{name}\n")
    for role, lines in rows.items():
        kind = "probe" if role == "probe_mixed" else "gallery"
        file = f"{prefix}_1N_{role}.csv" if kind == "probe" else f"{prefix}_1N_gallery_{role}.csv"
        atomic_write_text(meta / file, "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(lines))
    probes = len({t for _, t, _, n in faces if first_template[n] != t})
    return {f"{prefix}_1n_gallery_templates": len(first_template), f"{prefix}_1n_probe_templates": probes}


def write_ijbs(out: Path, subjects: list[int], results: dict[tuple, Any], failed: set[str]) -> dict[str, int]:
    """The IJB-S layout read by :mod:`qgface.eval.benchmarks.ijbs` (docs/method.md §7.7). ``results`` maps
    ``("IJBS", path)`` to the JPEG of ``<PID>/videos_<VIDEO>_<FRAME>.jpg`` or ``<PID>/img_<IMAGE>.jpg``;
    ``subjects`` lists the PIDs (first half: galleries g1, second half: g2). Paths in ``failed`` are
    listed in the metadata but left out of the image list and the folder (alignment failures)."""
    root = out / "IJBS"
    paths = sorted((k[1] for k in results if k[0] == "IJBS"), key=_ijbs_order)
    for path in paths:
        if path not in failed:
            (root / "aligned" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "aligned" / path).write_bytes(results[("IJBS", path)])
    kept = [p for p in paths if p not in failed]
    atomic_write_text(root / IJBS_IMAGE_LIST, ",path\n" + "".join(f"{i},{p}\n" for i, p in enumerate(kept)))
    meta, photos, gallery_video, probe_videos = [], {}, {}, set()
    for path in paths:
        pid, stem = path.split("/")[0], Path(path).stem.split("_")
        file = f"videos/{stem[1]}.mp4" if stem[0] == "videos" else f"img/{stem[1]}.jpg"
        meta.append(f"{pid},{file},{stem[2] if stem[0] == 'videos' else 0}\n")
        if stem[0] == "img":
            photos.setdefault(int(pid), []).append(file)
        elif int(stem[1]) < IJBS_PROBE_VIDEO_BASE:
            gallery_video[int(pid)] = file
        else:
            probe_videos.add(file)
    proto = root / "protocols"
    (proto / "galleries").mkdir(parents=True, exist_ok=True)
    atomic_write_text(proto / "cs6_metadata.csv", "SUBJECT_ID,FILENAME,FRAME\n" + "".join(meta))
    probes = "FILENAME\n" + "".join(f"{v}\n" for v in sorted(probe_videos))
    atomic_write_text(proto / "cs6_surveillance_to_single-booking_probe.csv", probes)
    atomic_write_text(proto / "cs6_surveillance_to_surveillance_probe.csv", probes)
    half = len(subjects) // 2
    for g, members in ((1, subjects[:half]), (2, subjects[half:])):
        header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
        rows = {
            "single": [f"{s},{s},{photos[s][0]}\n" for s in members],
            "booking": [f"{s},{s},{f}\n" for s in members for f in photos[s]],
            "surveillance": [f"{s},{s},{gallery_video[s]}\n" for s in members],
        }
        for kind, lines in rows.items():
            atomic_write_text(proto / "galleries" / f"cs6_surveillance_to_{kind}_g{g}.csv", header + "".join(lines))
    return {"ijbs_images": len(kept), "ijbs_subjects": len(subjects), "ijbs_probe_videos": len(probe_videos)}


IJBS_IMAGE_LIST = "image_list_mtcnn_fail_skipped_v1.csv"
IJBS_PROBE_VIDEO_BASE = 2000
"""synthetic IJB-S video ids: 1000 + PID are gallery videos (one subject each), 2000 + m probe videos"""


def _ijbs_order(path: str) -> tuple:
    pid, stem = path.split("/")
    return (int(pid), *(int(v) if v.isdigit() else v for v in Path(stem).stem.split("_")))
