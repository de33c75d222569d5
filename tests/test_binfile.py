"""InsightFace ``.bin`` files (restricted unpickling) and the JPEG <-> BGR helpers used on their images."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from qgface.data.binfile import BinFileError, load_bin, save_bin
from qgface.data.images import decode_bgr, encode_jpeg, normalize_bgr


def py2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """The opcodes Python 2's cPickle writes for ``dump((images, issame), f, 2)``, assembled by hand."""
    out = bytearray(b"\x80\x02]q\x00(")  # PROTO 2, EMPTY_LIST, BINPUT 0, MARK
    for i, img in enumerate(images):
        out += (b"U" + bytes([len(img)])) if len(img) < 256 else (b"T" + struct.pack("<i", len(img)))
        out += img + b"q" + bytes([i + 1])  # SHORT_BINSTRING/BINSTRING (py2 str), BINPUT
    out += b"e]q\x7f(" + b"".join(b"\x88" if s else b"\x89" for s in issame)  # APPENDS, list of NEWTRUE/FALSE
    out += b"e\x86q\x80."  # APPENDS, TUPLE2, BINPUT, STOP
    return bytes(out)


IMAGES = [b"\xff\xd8jpeg-one", b"\xff\xd8" + bytes(range(256)) * 2, b"three", b"four"]


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "lfw.bin"
    save_bin(path, IMAGES, [True, False])
    images, issame = load_bin(path)
    assert images == IMAGES
    assert issame.dtype == np.bool_ and issame.tolist() == [True, False]
    assert pickle.loads(path.read_bytes()) == (IMAGES, [True, False])  # plain pickle, protocol 4
    assert path.read_bytes()[:2] == b"\x80\x04"


def test_loads_python2_pickle(tmp_path):
    path = tmp_path / "py2.bin"
    path.write_bytes(py2_pickle(IMAGES, [False, True]))
    images, issame = load_bin(path)
    assert images == IMAGES and issame.tolist() == [False, True]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("flags", [[np.True_, np.False_], np.array([True, False])], ids=["scalars", "array"])
def test_loads_numpy_bools(tmp_path, protocol, flags):
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((IMAGES, flags), protocol=protocol))  # protocol 2 bytes use _codecs.encode
    images, issame = load_bin(path)
    assert images == IMAGES and issame.tolist() == [True, False]


class _RunsCommand:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _WritesFile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("evil,name", [(_RunsCommand, "posix.system"), (_WritesFile, "io.open")])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, evil, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([evil(str(marker))], [True]), protocol=2))
    with pytest.raises(BinFileError, match=rf"evil\.bin: not loaded: refused to load global {name}"):
        load_bin(path)
    assert not marker.exists()


def test_refuses_non_bool_numpy_and_codec_tricks(tmp_path):
    path = tmp_path / "obj.bin"
    path.write_bytes(pickle.dumps((IMAGES, np.array(["a", "b"], dtype=object)), protocol=2))
    with pytest.raises(BinFileError, match=r"obj\.bin: .*numpy dtype 'O8' refused"):
        load_bin(path)
    codec = pickle.dumps(b"x", protocol=2).replace(b"latin1", b"rot_13")
    path.write_bytes(codec)
    with pytest.raises(BinFileError, match="only for latin-1"):
        load_bin(path)


def test_bad_structure(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps((IMAGES, [True])))
    with pytest.raises(BinFileError, match=r"bad\.bin: 4 images for 1 pairs \(expected 2\)"):
        load_bin(path)
    path.write_bytes(pickle.dumps((IMAGES, [1, 0])))
    with pytest.raises(BinFileError, match="issame must be a flat list of booleans"):
        load_bin(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(BinFileError, match=r"bad\.bin: not loaded"):
        load_bin(path)
    with pytest.raises(BinFileError, match=r"missing\.bin: validation \.bin file not found"):
        load_bin(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        save_bin(tmp_path / "out.bin", IMAGES[:3], [True])
    assert not (tmp_path / "out.bin").exists()


# ---- JPEG <-> BGR ----------------------------------------------------------------------------


def pil_jpeg(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_decode_standard_jpeg_gives_bgr():
    red = pil_jpeg((255, 0, 0))  # an ordinary JPEG of a red image, written by another library
    bgr = decode_bgr(red)
    assert bgr.dtype == np.uint8 and bgr.shape == (16, 16, 3)
    np.testing.assert_allclose(bgr[8, 8], [0, 0, 255], atol=3)
    np.testing.assert_allclose(decode_bgr(red, source_rgb=False)[8, 8], [255, 0, 0], atol=3)


def test_encode_writes_standard_rgb_jpeg():
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(bgr))).convert("RGB"))
    np.testing.assert_allclose(decoded[8, 8], [0, 0, 255], atol=3)
    swapped = np.asarray(Image.open(io.BytesIO(encode_jpeg(bgr, store_rgb=False))).convert("RGB"))
    np.testing.assert_allclose(swapped[8, 8], [255, 0, 0], atol=3)


def test_encode_decode_round_trip():
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=-1).astype(np.uint8)
    for flag in (True, False):
        out = decode_bgr(encode_jpeg(img, quality=100, store_rgb=flag), source_rgb=flag)
        assert np.abs(out.astype(int) - img).mean() < 2


@pytest.mark.parametrize("payload", [b"", b"\xff\xd8 not really a jpeg", b"GIF89a"])
def test_decode_rejects_non_images(payload):
    with pytest.raises(ValueError, match="cannot decode"):
        decode_bgr(payload)


def test_normalize_bgr():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 51, 255
    x = normalize_bgr(img)
    assert x.dtype == np.float32 and x.shape == (3, 2, 3) and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0, 0], [-1.0, -0.6, 1.0], atol=1e-6)
    batch = normalize_bgr(np.stack([img, 255 - img]))
    assert batch.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(batch[1, :, 1, 2], [1.0, 0.6, -1.0], atol=1e-6)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        normalize_bgr(np.zeros((3, 4, 4), np.float32))
