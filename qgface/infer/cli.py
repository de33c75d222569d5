"""Options and error handling shared by ``python -m qgface.embed|verify|search``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from qgface.detect import DetectorWeightsError
from qgface.models import CheckpointError

__all__ = ["add_model_options", "embed_file", "recognizer_from_args", "run_cli"]

_USER_ERRORS = (CheckpointError, DetectorWeightsError, FileNotFoundError, ValueError)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file (e.g. <run>/checkpoints/last.pt, or an AdaFace/QGFace .ckpt)",
    )
    parser.add_argument("--backbone", default=None, help="backbone name, needed only for a bare state dict")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default 64)")
    parser.add_argument(
        "--weights-dir",
        default=None,
        help="folder with MTCNN's pnet.pt/rnet.pt/onet.pt (default: the facenet-pytorch wheel's)",
    )


def recognizer_from_args(args: argparse.Namespace):
    from qgface.infer.recognizer import Recognizer  # imports torch: after the parser, so --help stays fast

    return Recognizer.from_checkpoint(
        args.checkpoint,
        name=args.backbone,
        device=args.device,
        batch_size=args.batch_size,
        detector_weights=args.weights_dir,
    )


def embed_file(recognizer, path: str):
    """``(embedding [512], norm)`` of the image file ``path`` (aligned crop, or raw photo: detected)."""
    from qgface.infer.files import read_bgr

    crop = recognizer.align(read_bgr(path))
    if crop is None:
        raise ValueError(f"{path}: no face found (try python -m qgface.align with --upsample for tiny faces)")
    embeddings, norms = recognizer.embed_aligned(crop)
    return embeddings[0], float(norms[0])


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; a user error becomes one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return body()
    except _USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
