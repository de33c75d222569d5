"""``python -m qgface.verify --checkpoint CKPT A B``: are the faces in two images the same person?

Prints the cosine similarity of the two flip-fused embeddings, each face's norm (QGFace's quality
estimate: higher is a clearer face) and, given a threshold (``--threshold``, or learnt from a
verification set with ``--threshold-from lfw.bin`` as the LFW 10-fold protocol learns it), the
decision "same" or "different". Images may be aligned 112x112 crops or raw photos (detected).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qgface.infer.cli import add_model_options, embed_file, recognizer_from_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qgface.verify", description=__doc__.split("\n\n")[0])
    add_model_options(parser)
    parser.add_argument("a", help="first image")
    parser.add_argument("b", help="second image")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--threshold", type=float, default=None, help="cosine similarity above which the faces are the same person"
    )
    group.add_argument(
        "--threshold-from",
        default=None,
        metavar="BIN",
        help="learn the threshold on an InsightFace verification set (e.g. eval data's lfw.bin), "
        "10-fold as the HQ evaluation does; printed, to pass as --threshold next time",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from qgface.infer.recognizer import cosine_similarity
        from qgface.infer.threshold import threshold_from_bin

        recognizer = recognizer_from_args(args)
        (emb_a, norm_a), (emb_b, norm_b) = embed_file(recognizer, args.a), embed_file(recognizer, args.b)
        similarity = float(cosine_similarity(emb_a, emb_b)[0])
        print(f"similarity {similarity:.4f}")
        print(f"norm {norm_a:.2f} {args.a}")
        print(f"norm {norm_b:.2f} {args.b}")
        threshold, source = args.threshold, "given"
        if args.threshold_from:
            learnt = threshold_from_bin(recognizer, args.threshold_from)
            threshold, source = learnt.cosine, f"{learnt.source}, accuracy {learnt.accuracy:.2f}%"
        if threshold is not None:
            print(f"threshold {threshold:.4f} ({source})")
            print("same" if similarity > threshold else "different")
        return 0

    return run_cli("qgface.verify", body)


if __name__ == "__main__":
    sys.exit(main())
