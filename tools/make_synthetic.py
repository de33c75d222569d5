#!/usr/bin/env python3
"""Generate the synthetic mixed-quality face dataset and/or a preview grid of it.

    python tools/make_synthetic.py /data/synthetic                   # the default set (~1 minute on 2 cores)
    python tools/make_synthetic.py /tmp/tiny --identities 20 --images-per-identity 4 --eval-identities 10
    python tools/make_synthetic.py --preview /tmp/synthetic.png      # look at the faces, nothing generated

The output folder is an evaluation data root (data.root / eval.data_root) holding every benchmark
layout; training and evaluation normally create it themselves through ``ensure_synthetic``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from qgface.data.synthetic import HQ_SETS, generate, render_shot
from qgface.vocab import synthetic


def _decode(payload: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)


def _tile(img: np.ndarray, label: str = "") -> np.ndarray:
    img = cv2.resize(img, (112, 112), interpolation=cv2.INTER_NEAREST if img.shape[0] < 112 else cv2.INTER_AREA)
    if label:
        cv2.putText(img, label, (2, 108), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def preview(path: Path, seed: int, identities: int, per_identity: int = 8) -> None:
    """Rows: training images of a few identities; SCface distances 1-3, an IR camera and the mugshot;
    TinyFace probes (original size, upscaled) and gallery; IJB loose crops with their 5 landmarks."""
    rows = []
    for n in range(identities):
        rows.append([_tile(_decode(render_shot(seed, ("aligned", n, 10, k, {})))) for k in range(per_identity)])
    for n in range(2):
        row = [_tile(_decode(render_shot(seed, ("scface", n, 17, 0, {"camera": 0, "distance": 0}))), "mugshot")]
        for camera, distance in ((1, 1), (2, 1), (1, 2), (3, 2), (1, 3), (4, 3), (7, 3)):
            shot = ("scface", n, 17, 10 * camera + distance, {"camera": camera, "distance": distance})
            row.append(_tile(_decode(render_shot(seed, shot)), f"cam{camera} d{distance}"))
        rows.append(row)
    row = []
    for k in range(3):
        orig, _ = render_shot(seed, ("tiny", 0, 16, k, {"px": (12, 24)}))
        row.append(_tile(_decode(orig), f"tiny probe {_decode(orig).shape[1]}px"))
    for k in range(2):
        orig, _ = render_shot(seed, ("tiny", 0, 16, 10 + k, {"px": (32, 64)}))
        row.append(_tile(_decode(orig), f"tiny gallery {_decode(orig).shape[1]}px"))
    for media in range(3):
        data, marks, score = render_shot(seed, ("loose", 0, 18, media, {"media": media, "frame": 0}))
        img = _decode(data)
        for x, y in marks:
            cv2.circle(img, (round(x), round(y)), 2, (0, 0, 255), -1)
        row.append(_tile(img, f"IJB {img.shape[1]}px s={score:.2f}"))
    rows.append(row)
    width = max(len(r) for r in rows)
    blank = np.zeros((112, 112, 3), np.uint8)
    grid = np.concatenate([np.concatenate(r + [blank] * (width - len(r)), 1) for r in rows], 0)
    if not cv2.imwrite(str(path), grid):
        raise SystemExit(f"could not write the preview {path} (a .png path in an existing folder?)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("out", nargs="?", type=Path, help="new or empty folder to generate the dataset into")
    parser.add_argument("--identities", type=int, default=synthetic.IDENTITIES, help="training identities")
    parser.add_argument(
        "--images-per-identity", type=int, default=synthetic.IMAGES_PER_IDENTITY, help="training images per identity"
    )
    parser.add_argument(
        "--eval-identities", type=int, default=synthetic.EVAL_IDENTITIES, help="identities of every evaluation set"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of identities, variations and degradations")
    parser.add_argument(
        "--hq-pairs",
        type=int,
        help=f"pairs (even) in each of {', '.join(HQ_SETS)} (default: 3 per eval identity, at most 300)",
    )
    parser.add_argument("--tinyface-probes", type=int, default=2, help="TinyFace probes per identity")
    parser.add_argument("--tinyface-gallery", type=int, default=2, help="TinyFace gallery matches per identity")
    parser.add_argument(
        "--tinyface-distractors", type=int, help="TinyFace distractor images (default: 4 per eval identity)"
    )
    parser.add_argument("--scface-subjects", type=int, help="SCface subjects (default: eval identities, at most 50)")
    parser.add_argument("--ijb-templates", type=int, default=3, help="IJB-B/C templates per identity")
    parser.add_argument("--ijb-media", type=int, default=2, help="most media per IJB template")
    parser.add_argument("--ijb-frames", type=int, default=2, help="most frames per IJB media")
    parser.add_argument(
        "--ijb-max-pairs", type=int, default=100_000, help="cap on IJB template pairs (impostors sampled)"
    )
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--preview", type=Path, help="write a PNG grid of example images here")
    parser.add_argument("--preview-identities", type=int, default=6, help="identities (rows) in the preview")
    args = parser.parse_args(argv)
    if args.out is None and args.preview is None:
        parser.error("give an output folder, --preview PNG, or both")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.preview is not None:
        preview(args.preview, args.seed, args.preview_identities)
        print(f"preview written to {args.preview}")
    if args.out is not None:
        start = time.perf_counter()
        generate(
            args.out,
            identities=args.identities,
            images_per_identity=args.images_per_identity,
            eval_identities=args.eval_identities,
            seed=args.seed,
            hq_pairs=args.hq_pairs,
            tinyface_probes=args.tinyface_probes,
            tinyface_gallery=args.tinyface_gallery,
            tinyface_distractors=args.tinyface_distractors,
            scface_subjects=args.scface_subjects,
            ijb_templates=args.ijb_templates,
            ijb_media=args.ijb_media,
            ijb_frames=args.ijb_frames,
            ijb_max_pairs=args.ijb_max_pairs,
            workers=args.workers,
        )
        files = sum(1 for p in args.out.rglob("*") if p.is_file())
        print(f"generated {args.out}: {files} files in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
