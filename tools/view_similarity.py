#!/usr/bin/env python3
"""How far apart a model puts the two training views of an image, per view recipe (docs/ablation.md).

For N images of a run's training set, makes the pair of views of each two-view recipe with the
trainer's own functions and seeds (``lh``: the clean H view and the degraded L view of docs/method.md §2;
``adaface``: two AdaFace-augmented views, ablation settings A-C), embeds them with a checkpoint's
backbone (eval mode, no flip fusion) and prints per recipe: the cosine of each pair (mean and 10th
percentile), and the share of pairs for which an image of another identity among the N is closer to
a view than its partner view is, which is what the contrastive loss's hardest negative measures.

    python tools/view_similarity.py logs/ablation/baseline-seed0-<stamp>/checkpoints/last.pt --images 512
    python tools/view_similarity.py <same checkpoint> --images 512 data.adaface_crop=false   # without the crop
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from qgface.config import load_config
from qgface.data.datasets import TwoViewDataset, open_train_dataset
from qgface.data.images import to_network_input
from qgface.models.io import load_backbone
from qgface.train.components import train_data_root

RECIPES = ("lh", "adaface")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="<run>/checkpoints/<name>.pt; the run's config.yaml (two folders up) names the training set",
    )
    parser.add_argument("--images", type=int, default=512, help="training images to sample (evenly spaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the views (as the trainer's seed)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "overrides", nargs="*", help="key=value changes to the run's config, e.g. data.adaface_crop=false"
    )
    return parser.parse_intermixed_args()


@torch.no_grad()
def pair_embeddings(model: torch.nn.Module, pairs: TwoViewDataset, indices: list[int], batch_size: int):
    """Unit embeddings [N, 2, D] of the two views of each image, and the labels [N]."""
    embeddings, labels = [], []
    for start in range(0, len(indices), batch_size):
        items = [pairs[i] for i in indices[start : start + batch_size]]
        views = to_network_input(torch.stack([views for views, _ in items]))  # [b, 2, 3, 112, 112]
        emb, _ = model(views.flatten(0, 1))
        embeddings.append(emb.reshape(len(items), 2, -1))
        labels += [label for _, label in items]
    return torch.cat(embeddings), torch.tensor(labels)


def pair_statistics(emb: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """For unit embeddings [N, 2, D] of N view pairs: the pair cosine (mean, 10th percentile) and the share
    of pairs with a view of another identity closer to one of their views than the partner view is."""
    a, b = emb[:, 0], emb[:, 1]
    positive = (a * b).sum(1)
    other = (labels[:, None] != labels[None, :]).repeat(1, 2)  # [N, 2N]: columns = all views, a's then b's
    views = torch.cat([a, b])
    hardest = torch.stack([(view @ views.t()).masked_fill(~other, -2.0).amax(1) for view in (a, b)]).amax(0)
    return {
        "mean": positive.mean().item(),
        "p10": positive.quantile(0.1).item(),
        "closer_other": (hardest > positive).float().mean().item(),
    }


def main() -> None:
    args = parse_args()
    run_dir = args.checkpoint.resolve().parents[1]
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    base = open_train_dataset(train_data_root(cfg))
    model = load_backbone(args.checkpoint, cfg.model.backbone)
    indices = np.linspace(0, len(base) - 1, min(args.images, len(base))).round().astype(int).tolist()
    print(f"{args.checkpoint}: {len(indices)} training images of {run_dir.name}")
    for recipe in RECIPES:
        pairs = TwoViewDataset(base, recipe, cfg.data, args.seed)
        emb, labels = pair_embeddings(model, pairs, indices, args.batch_size)
        stats = pair_statistics(emb, labels)
        print(
            f"{recipe:8s} pair cosine mean {stats['mean']:.3f}, 10th percentile {stats['p10']:.3f}; another "
            f"identity closer than the partner for {stats['closer_other']:.1%} of pairs"
        )


if __name__ == "__main__":
    main()
