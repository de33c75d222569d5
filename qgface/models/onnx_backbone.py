"""A backbone as an ONNX file: export it, and run the file like the torch module (docs/method.md §9).

The exported graph takes ``image`` ``[batch, 3, 112, 112]`` float32 (BGR, normalised as
``qgface.data.images.normalize_bgr`` does) with a dynamic batch, and returns ``embedding``
``[batch, 512]`` (unit rows) and ``norm`` ``[batch, 1]``, the two outputs of
:class:`qgface.models.IResNet`. The flip fusion of the evaluation stays outside the graph, so an
:class:`OnnxBackbone` can stand wherever the torch backbone does (``qgface.eval.embed``).
``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional ``onnx`` extra, imported only here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qgface.atomic import atomic_write_bytes

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OnnxBackbone", "OnnxModelError", "export_onnx"]

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("embedding", "norm")
_EXTRA_HINT = "install the onnx extra: pip install 'qgface[onnx]' (onnx, onnxscript, onnxruntime)"


class OnnxModelError(ValueError):
    """An ONNX file cannot be exported, opened or does not have the backbone's inputs and outputs."""


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = 18, image_size: int = 112) -> Path:
    """Export ``model`` (returning ``(embedding, norm)``) to ``path`` with a dynamic batch; atomically."""
    try:
        import onnx
    except ImportError:
        raise OnnxModelError(f"exporting to ONNX needs the onnx packages: {_EXTRA_HINT}") from None
    path = Path(path)
    model = model.cpu().eval()
    example = torch.zeros(2, 3, image_size, image_size)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    proto = program.model_proto
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    log.info("exported %s to %s (opset %d)", type(model).__name__, path, opset)
    return path


class OnnxBackbone(nn.Module):
    """Run an exported backbone with onnxruntime behind the torch backbone's interface.

    ``forward`` takes ``[B, 3, H, W]`` float32 and returns ``(embedding, norm)`` tensors on the
    input's device. The session uses onnxruntime's CUDA provider where it is installed
    (``onnxruntime-gpu``), else the CPU.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise OnnxModelError(f"running an ONNX model needs onnxruntime: {_EXTRA_HINT}") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model {self.path} does not exist")
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
        ]
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise OnnxModelError(f"onnxruntime cannot open {self.path}: {exc}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise OnnxModelError(
                f"{self.path} has inputs {inputs} and outputs {outputs}; expected [{INPUT_NAME!r}] "
                f"and {list(OUTPUT_NAMES)} (export it with tools/export_onnx.py)"
            )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {INPUT_NAME: np.ascontiguousarray(images.detach().float().cpu().numpy())}
        embedding, norm = self.session.run(list(OUTPUT_NAMES), feed)
        return torch.from_numpy(embedding).to(images.device), torch.from_numpy(norm).to(images.device)
