"""``python -m qgface.align SRC DST``: detect and align every photo under SRC into 112x112 crops.

Crops land at the same relative paths under DST, with ``DST/landmarks.csv`` (one row per face; images
without a face are listed with an empty score). Exits 1 with one message on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qgface.align", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder of photos (searched recursively)")
    parser.add_argument("dst", help="output folder for the aligned crops and landmarks.csv")
    parser.add_argument(
        "--all-faces",
        action="store_true",
        help="write every face found (<stem>_1, _2, ... after the largest), not only the largest",
    )
    parser.add_argument(
        "--min-face-size",
        type=float,
        default=20.0,
        help="smallest face kept, source pixels (default 20); below 12 needs --upsample",
    )
    parser.add_argument(
        "--upsample",
        type=float,
        default=1.0,
        help="enlarge images by this factor before detection, for tiny faces such as "
        "surveillance crops (e.g. 3 with --min-face-size 6)",
    )
    parser.add_argument(
        "--pass-aligned",
        action="store_true",
        help="copy images that are already 112x112 unchanged (status passed_through)",
    )
    parser.add_argument(
        "--weights-dir",
        default=None,
        help="folder with MTCNN's pnet.pt/rnet.pt/onet.pt (default: the facenet-pytorch wheel's)",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from qgface.detect import DetectorWeightsError  # imports torch: after the parser, so --help stays fast
    from qgface.infer.align_folder import AlignOptions, align_folder

    try:
        options = AlignOptions(
            all_faces=args.all_faces,
            min_face_size=args.min_face_size,
            upsample=args.upsample,
            pass_aligned=args.pass_aligned,
            weights_dir=args.weights_dir,
        )
        summary = align_folder(args.src, args.dst, options, workers=args.workers, progress=not args.no_progress)
    except (DetectorWeightsError, FileNotFoundError, ValueError) as exc:
        print(f"qgface.align: error: {exc}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
