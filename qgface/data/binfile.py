"""InsightFace validation ``.bin`` files (docs/method.md §7, HQ verification sets such as ``lfw.bin``).

A ``.bin`` is a pickle of ``(list of JPEG bytes, list of issame bools)``: images ``2i`` and
``2i+1`` form pair ``i``. The published files were written by Python 2 (protocol 2, ``str``
payloads), so they are read with ``encoding="bytes"``. Unpickling can run arbitrary code, so the
unpickler here resolves no global except the few that such files can legitimately need:
``_codecs.encode`` (how Python 3 pickles ``bytes`` at protocols < 3, accepted for latin-1 only) and
the numpy constructors of **boolean** scalars/arrays (``issame`` written as numpy bools).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgface.atomic import atomic_open

__all__ = ["BinFileError", "load_bin", "save_bin"]

log = logging.getLogger(__name__)


class BinFileError(ValueError):
    """A ``.bin`` file is missing, malformed, or refers to code it has no business running."""


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that only rebuilds ``bytes`` from their latin-1 text form."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only for latin-1 text, got {encoding!r}")
    return text.encode("latin1")


def _bool_dtype(spec: Any, *args: Any) -> np.dtype:
    """Stand-in for ``numpy.dtype`` that builds only the boolean dtype."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if spec not in ("b1", "?", "bool"):
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} refused: a .bin holds only boolean arrays")
    return np.dtype(spec, *args)


def _numpy_attr(submodule: str, name: str) -> Any:
    for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{name}")


_ALLOWED = {
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("numpy", "dtype"): lambda: _bool_dtype,
    ("numpy", "ndarray"): lambda: np.ndarray,
}
for _core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spellings of the same constructors
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = lambda: _numpy_attr("multiarray", "scalar")
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = lambda: _numpy_attr("multiarray", "_reconstruct")
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = lambda: _numpy_attr("numeric", "_frombuffer")  # protocol 5


class _BinUnpickler(pickle.Unpickler):
    """Refuses every global outside ``_ALLOWED``, so a hostile pickle cannot run anything."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: a .bin holds only JPEG bytes and booleans, "
                "so this pickle is not one, and it may try to run code"
            )
        return factory()


def load_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Images (JPEG bytes, ``2 * P`` of them) and ``issame`` (bool array of ``P`` pairs) of a ``.bin``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _BinUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise BinFileError(f"{path}: validation .bin file not found") from None
    except Exception as exc:  # any unpickling failure means the file is not a usable .bin
        raise BinFileError(f"{path}: not loaded: {exc}") from exc
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFileError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise BinFileError(f"{path}: the first element must be a list of JPEG byte strings")
    issame = np.asarray(issame)
    if issame.dtype != np.bool_ or issame.ndim != 1:
        raise BinFileError(
            f"{path}: issame must be a flat list of booleans, got dtype {issame.dtype} shape {issame.shape}"
        )
    if len(images) != 2 * len(issame):
        raise BinFileError(f"{path}: {len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    log.debug("loaded %s: %d pairs", path, len(issame))
    return [bytes(b) for b in images], issame


def save_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write ``(images, issame)`` as an InsightFace ``.bin`` (pickle protocol 4), atomically."""
    images = [bytes(b) for b in images]
    flags = [bool(x) for x in issame]
    if len(images) != 2 * len(flags):
        raise ValueError(f"{path}: {len(images)} images for {len(flags)} pairs (expected {2 * len(flags)})")
    with atomic_open(path, "wb") as f:
        pickle.dump((images, flags), f, protocol=4)
