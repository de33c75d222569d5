"""``python -m qgface.embed --checkpoint CKPT SRC OUT``: embeddings and norms of every image under SRC.

Writes ``OUT/embeddings.npy`` (float32 [N, 512], unit rows: the flip-fused embedding of the
evaluation), ``OUT/norms.npy`` ([N], the fused feature norm, QGFace's quality estimate) and
``OUT/index.csv`` (``path, row, status`` for every image). SRC holds aligned 112x112 crops, or raw
photos with ``--detect`` (112x112 images are still taken as aligned).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qgface.infer.cli import add_model_options, recognizer_from_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qgface.embed", description=__doc__.split("\n\n")[0])
    add_model_options(parser)
    parser.add_argument("src", help="folder of images (searched recursively)")
    parser.add_argument("out", help="output folder for embeddings.npy, norms.npy, index.csv")
    parser.add_argument(
        "--detect",
        action="store_true",
        help="raw photos: detect and align the largest face of every image that is not "
        "already 112x112; images without a face are listed in index.csv with status no_face",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from qgface.infer.folder import embed_folder, save_embeddings

        recognizer = recognizer_from_args(args)
        result = embed_folder(
            recognizer, args.src, detect=None if args.detect else False, progress=not args.no_progress
        )
        index = save_embeddings(result, args.out)
        print(f"embedded {len(result.paths)} images ({len(result.missing)} without a face) -> {index}")
        return 0

    return run_cli("qgface.embed", body)


if __name__ == "__main__":
    sys.exit(main())
