"""``python -m qgface.search --checkpoint CKPT PROBE GALLERY -k 5``: the gallery identities closest to a face.

GALLERY is a folder ``<identity>/<image>`` (aligned crops or raw photos, detected), or the output
folder of ``python -m qgface.embed`` run on such a folder (then nothing is re-embedded). An
identity's template is the normalised mean of its images' embeddings; identities are ranked by the
cosine similarity of their template to the probe's embedding.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qgface.infer.cli import add_model_options, embed_file, recognizer_from_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qgface.search", description=__doc__.split("\n\n")[0])
    add_model_options(parser)
    parser.add_argument("probe", help="probe image (aligned crop or raw photo)")
    parser.add_argument("gallery", help="folder <identity>/<image>, or a python -m qgface.embed output folder")
    parser.add_argument("-k", type=int, default=5, help="how many identities to list (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from qgface.infer.folder import embed_folder, identity_templates, load_embeddings, top_k

        if args.k < 1:
            raise ValueError(f"-k must be at least 1, got {args.k}")
        recognizer = recognizer_from_args(args)
        probe, _ = embed_file(recognizer, args.probe)
        gallery_dir = Path(args.gallery)
        if (gallery_dir / "index.csv").is_file() and (gallery_dir / "embeddings.npy").is_file():
            gallery = load_embeddings(gallery_dir)
        else:
            gallery = embed_folder(recognizer, gallery_dir, progress=not args.no_progress)
        if gallery.missing:
            print(f"{len(gallery.missing)} gallery images without a face left out", file=sys.stderr)
        if not gallery.paths:
            raise ValueError(f"no gallery face to search in {gallery_dir}")
        if gallery.embeddings.shape[1] != probe.shape[0]:
            raise ValueError(
                f"gallery embeddings in {gallery_dir} are {gallery.embeddings.shape[1]}-d but this "
                f"model's are {probe.shape[0]}-d: embed the gallery with the same checkpoint"
            )
        names, templates, counts = identity_templates(gallery.paths, gallery.embeddings)
        order, scores = top_k(probe, templates, args.k)
        for rank, (i, score) in enumerate(zip(order, scores), start=1):
            print(f"{rank}\t{names[i]}\t{score:.4f}\t({counts[i]} images)")
        return 0

    return run_cli("qgface.search", body)


if __name__ == "__main__":
    sys.exit(main())
