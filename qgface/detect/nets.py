"""MTCNN's three networks (Zhang et al. 2016) and the loading of their published weights.

P-Net (fully convolutional, 12x12 receptive field) proposes windows, R-Net (24x24 crops) rejects and
refines them, O-Net (48x48 crops) refines again and adds the five landmarks (docs/method.md §9).

The weights are the ones ``facenet-pytorch`` ships (``pnet.pt``, ``rnet.pt``, ``onet.pt``; MIT
licence; converted by its authors from the original Caffe release). Their dense layers expect
the last feature map flattened in (width, height, channel) order, a trace of the Caffe/TensorFlow
conversion; :func:`load_mtcnn_net` permutes those weight columns once, so the forward pass
flattens in PyTorch's ordinary (channel, height, width) order. Files are read with
``torch.load(weights_only=True)`` and checked key by key and shape by shape.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["MTCNN_WEIGHT_FILES", "ONet", "PNet", "RNet", "DetectorWeightsError", "find_mtcnn_weights", "load_mtcnn_net"]

MTCNN_WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
"""File names of the three networks' state dicts, in cascade order."""

_WEIGHTS_DISTRIBUTION = "facenet-pytorch"
_WEIGHTS_SUBDIR = "facenet_pytorch/data"


class DetectorWeightsError(ValueError):
    """The MTCNN weight files are missing or do not match the networks."""


class PNet(nn.Module):
    """Proposal network: ``[B,3,H,W]`` -> (box offsets ``[B,4,h,w]``, face probability ``[B,h,w]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement network: ``[B,3,24,24]`` -> (box offsets ``[B,4]``, face probability ``[B]``)."""

    flat_shape = (64, 3, 3)  # (channels, height, width) of the map feeding the first dense layer

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network: ``[B,3,48,48]`` -> (box offsets ``[B,4]``, landmarks ``[B,10]``, probability ``[B]``).

    The landmarks are five x then five y, as fractions of the input window.
    """

    flat_shape = (128, 3, 3)

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


def find_mtcnn_weights(weights_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding ``pnet.pt``/``rnet.pt``/``onet.pt``: ``weights_dir`` if given, else the data
    folder of the installed ``facenet-pytorch`` distribution (located from its metadata, never imported)."""
    if weights_dir is not None:
        folder = Path(weights_dir)
    else:
        try:
            dist = importlib.metadata.distribution(_WEIGHTS_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            raise DetectorWeightsError(
                "the MTCNN weights come from the facenet-pytorch wheel, which is not installed: run "
                "'pip install --no-deps facenet-pytorch==2.6.0' (it pins an old torch, hence --no-deps; "
                "qgface never imports it), or pass the folder holding pnet.pt/rnet.pt/onet.pt"
            ) from None
        folder = Path(dist.locate_file(_WEIGHTS_SUBDIR))
    missing = [name for name in MTCNN_WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise DetectorWeightsError(
            f"MTCNN weights folder {folder} lacks {', '.join(missing)}; expected "
            f"{', '.join(MTCNN_WEIGHT_FILES)} (facenet-pytorch's data folder)"
        )
    return folder


def _to_chw_columns(weight: torch.Tensor, chw: tuple[int, int, int]) -> torch.Tensor:
    """Reorder a dense weight's input columns from (w, h, c) flattening to (c, h, w) flattening."""
    c, h, w = chw
    return weight.reshape(-1, w, h, c).permute(0, 3, 2, 1).reshape(weight.shape[0], -1)


def load_mtcnn_net(net: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` (a published state dict) into ``net`` strictly; returns ``net`` in eval mode."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise DetectorWeightsError(f"cannot read MTCNN weights {path}: {exc}") from None
    own = net.state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise DetectorWeightsError(f"{path}: expected the keys {sorted(own)} of {type(net).__name__}, got {keys}")
    state = dict(state)
    first_dense = {RNet: "dense4.weight", ONet: "dense5.weight"}.get(type(net))
    if first_dense is not None:
        state[first_dense] = _to_chw_columns(state[first_dense], net.flat_shape)
    wrong = [
        f"{k} file {tuple(v.shape)} vs net {tuple(own[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise DetectorWeightsError(f"{path}: weights of the wrong shape for {type(net).__name__}: {'; '.join(wrong)}")
    net.load_state_dict(state, strict=True)
    return net.eval()
