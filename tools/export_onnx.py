#!/usr/bin/env python3
"""Export a checkpoint's backbone to ONNX (dynamic batch; outputs ``embedding`` and ``norm``).

    python tools/export_onnx.py logs/mine/checkpoints/last.pt mine.onnx
    python -m qgface.eval --onnx mine.onnx --benchmark hq eval.data_root=/data/eval   # check its numbers

After writing, the file is run with onnxruntime on random faces and compared with the torch backbone;
the largest differences are printed, and the command fails if they exceed ``--tolerance``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from qgface.models import CheckpointError, load_backbone
from qgface.models.onnx_backbone import OnnxBackbone, OnnxModelError, export_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint file (qgface last.pt, AdaFace/QGFace .ckpt, or a state dict)")
    parser.add_argument("out", help="output .onnx file")
    parser.add_argument("--backbone", default=None, help="backbone name, needed only for a bare state dict")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest |difference| of the unit embeddings allowed in the check (default 1e-4)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("onnx_ir", "onnxscript"):  # the exporter's graph passes log every rewrite at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        model = load_backbone(args.checkpoint, name=args.backbone)
        export_onnx(model, args.out, opset=args.opset)
        images = torch.rand(4, 3, 112, 112) * 2 - 1
        with torch.no_grad():
            emb, norm = model(images)
        onnx_emb, onnx_norm = OnnxBackbone(args.out)(images)
    except (CheckpointError, OnnxModelError) as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 1
    emb_diff = float((emb - onnx_emb).abs().max())
    norm_diff = float(((norm - onnx_norm).abs() / norm.abs()).max())
    print(f"wrote {args.out}: max |embedding difference| {emb_diff:.2e}, max relative norm difference {norm_diff:.2e}")
    if emb_diff > args.tolerance:
        print(
            f"export_onnx: error: the ONNX model differs from the checkpoint by {emb_diff:.2e} > {args.tolerance}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
