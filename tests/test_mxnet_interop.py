"""Real MXNet against qgface's RecordIO, .bin loader and JPEG decoding (DESIGN.md, "RecordIO without MXNet").

MXNet 1.9.1 (retired; needs numpy 1.23.5) lives in its own cached venv ``<repo>/.mxnet-venv``, built
on first use under a file lock, and runs only in a subprocess: the test process never imports it.
Without network access the tests are skipped with the reason, unless ``QGFACE_REQUIRE_MXNET=1``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qgface.data.binfile import load_bin
from qgface.data.images import decode_bgr, encode_jpeg
from qgface.data.insightface_rec import identity_of, read_insightface_header, write_insightface_rec
from qgface.data.irheader import IRHeader, pack, unpack
from qgface.data.recordio import RecordIOReader, RecordIOWriter

pytestmark = pytest.mark.mxnet

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".mxnet-venv"
MARKER = VENV / "qgface-complete.txt"  # written last; holds the pins, so a changed pin rebuilds
PINS = ("numpy==1.23.5", "mxnet==1.9.1")
MAGIC = b"\x0a\x23\xd7\xce"


def _run(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-1500:]}")


def ensure_mxnet_venv() -> Path:
    """The python of the MXNet venv, building it once (a lock keeps concurrent sessions out)."""
    python = VENV / "bin" / "python"
    lock = Path(tempfile.gettempdir()) / f"qgface-mxnet-venv-{hashlib.sha1(bytes(VENV)).hexdigest()[:12]}.lock"
    with open(lock, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if MARKER.is_file() and MARKER.read_text() == " ".join(PINS) and python.exists():
            return python
        shutil.rmtree(VENV, ignore_errors=True)  # incomplete or outdated
        _run([sys.executable, "-m", "venv", str(VENV)], timeout=300)
        _run([str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check", *PINS], timeout=900)
        _run([str(python), "-I", "-c", "import mxnet.recordio"], timeout=120)
        MARKER.write_text(" ".join(PINS))
    return python


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    try:
        return ensure_mxnet_venv()
    except Exception as exc:  # no network, no wheel for this platform, ...
        reason = f"MXNet venv {VENV} unavailable: {exc}"
        if os.environ.get("QGFACE_REQUIRE_MXNET") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


MX_SCRIPT = r"""
import pickle, sys
import numpy as np
import mxnet as mx

job = pickle.load(open(sys.argv[1], "rb"))
out = {}
w = mx.recordio.MXIndexedRecordIO(job["mx_idx"], job["mx_rec"], "w")
for key, label, id_, id2, payload in job["records"]:
    w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, id_, id2), payload))
w.close()

def read_pair(rec, idx):
    r = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    by_key = []
    for key in r.keys:
        h, s = mx.recordio.unpack(r.read_idx(key))
        by_key.append((key, h.flag, h.label.tolist() if h.flag > 0 else h.label, h.id, h.id2, s))
    r.close()
    seq, s = [], mx.recordio.MXRecordIO(rec, "r")
    while True:
        item = s.read()
        if item is None:
            break
        seq.append(item)
    return by_key, seq

out["ours"] = read_pair(job["our_rec"], job["our_idx"])
r = mx.recordio.MXIndexedRecordIO(job["if_idx"], job["if_rec"], "r")
header, _ = mx.recordio.unpack(r.read_idx(0))
images = []
for key in range(1, int(header.label[0])):
    h, jpeg = mx.recordio.unpack(r.read_idx(key))
    images.append((h.label, mx.image.imdecode(jpeg).asnumpy()))
out["insightface"] = (header.label.tolist(), images)
out["decoded"] = [mx.image.imdecode(p).asnumpy() for p in job["jpegs"]]
pickle.dump(out, open(job["out"], "wb"), protocol=4)
for protocol in (2, pickle.HIGHEST_PROTOCOL):
    for name, flags in (("scalars", [np.True_, np.False_]), ("array", np.array([True, False]))):
        with open("%s/np_%s_%d.bin" % (job["dir"], name, protocol), "wb") as f:
            pickle.dump((job["jpegs"][:4], flags), f, protocol=protocol)
"""


def _records() -> list[tuple[int, object, int, int, bytes]]:
    """Writes that exercise every corner: array labels, odd lengths, magic words (also inside the header)."""
    rng = np.random.default_rng(7)
    magic_float = struct.unpack("<f", MAGIC)[0]  # a label whose bytes are the magic (offset 4: aligned)
    magic_id = struct.unpack("<Q", MAGIC + b"\0\0\0\0")[0]  # header id field at offset 8
    return [
        (0, [10.0, 13.0], 0, 0, b""),
        (5, 3.0, 5, 0, rng.bytes(1001)),
        (2, 1.0, 2, 0, MAGIC + rng.bytes(7) + MAGIC + MAGIC[:2]),  # payload starts at offset 24: aligned
        (9, [4.0, 0.5, 7.0], 9, 1, rng.bytes(8) + MAGIC + rng.bytes(3) + MAGIC + rng.bytes(5)),
        (1, magic_float, magic_id, 3, b"x"),
        (7, 2.0, 7, 0, MAGIC * 4),
        (3, 0.0, 3, 0, rng.bytes(50_003)),
        (11, [1.0], 11, 0, b""),
    ]


@pytest.fixture(scope="module")
def mx_run(mxnet_python, tmp_path_factory):
    """Write pairs here, run MXNet once (it writes its own pair and reads ours), return everything."""
    d = tmp_path_factory.mktemp("mx")
    records = _records()
    with RecordIOWriter(d / "our.rec", d / "our.idx") as w:
        for key, label, id_, id2, payload in records:
            w.write(key, pack(IRHeader(0, label, id_, id2), payload))
    rng = np.random.default_rng(3)
    faces = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    faces += [np.full((112, 112, 3), (200, 60, 20), np.uint8)]
    jpegs = [encode_jpeg(f, quality=90) for f in faces]
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buf, format="JPEG", quality=95)
    jpegs.append(buf.getvalue())  # red, encoded by another library
    write_insightface_rec(d / "if.rec", d / "if.idx", zip(jpegs[:4], [0, 0, 1, 2]))
    job = {
        "records": records,
        "jpegs": jpegs,
        "dir": str(d),
        "out": str(d / "out.pkl"),
        **{f"{p}_{e}": str(d / f"{p}.{e}") for p in ("mx", "our", "if") for e in ("rec", "idx")},
    }
    (d / "job.pkl").write_bytes(pickle.dumps(job, protocol=4))
    (d / "mx_job.py").write_text(MX_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1")
    proc = subprocess.run(
        [str(mxnet_python), "-I", str(d / "mx_job.py"), str(d / "job.pkl")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, job, pickle.loads((d / "out.pkl").read_bytes())


def _as_tuple(key, header, payload):
    label = header.label.tolist() if header.flag > 0 else header.label
    return key, header.flag, label, header.id, header.id2, payload


def test_mxnet_written_pair_reads_identically_here(mx_run):
    d, job, _ = mx_run
    with RecordIOReader(d / "mx.rec", d / "mx.idx") as r:
        assert r.keys == [rec[0] for rec in job["records"]]
        for key, label, id_, id2, payload in job["records"]:
            header, body = unpack(r.read(key))
            flag = 0 if isinstance(label, float) else len(label)
            want = label if flag else float(np.float32(label))
            assert _as_tuple(key, header, body) == (key, flag, want, id_, id2, payload)


def test_our_pair_reads_identically_in_mxnet(mx_run):
    d, job, out = mx_run
    by_key, sequential = out["ours"]
    with RecordIOReader(d / "our.rec", d / "our.idx") as r:
        assert by_key == [_as_tuple(k, *unpack(r.read(k))) for k in r.keys]
        assert sequential == list(r)


def test_same_writes_give_byte_identical_files(mx_run):
    d, _, _ = mx_run
    assert (d / "our.rec").read_bytes() == (d / "mx.rec").read_bytes()
    assert (d / "our.idx").read_bytes() == (d / "mx.idx").read_bytes()
    assert (d / "our.rec").read_bytes().count(MAGIC) > len(_records())  # the splits really happened


def test_insightface_layout_as_insightface_reads_it(mx_run):
    d, job, out = mx_run
    header_label, images = out["insightface"]
    assert header_label == [5.0, 8.0]
    assert [label for label, _ in images] == [0.0, 0.0, 1.0, 2.0]
    r = RecordIOReader(d / "if.rec", d / "if.idx")
    first, end = read_insightface_header(r)
    assert (first, end) == (1, 5)
    for key, (label, rgb) in zip(range(first, end), images):
        header, jpeg = unpack(r.read(key))
        assert identity_of(header) == label
        assert np.abs(decode_bgr(jpeg)[:, :, ::-1].astype(int) - rgb).max() <= 2  # MXNet's RGB = our BGR reversed


def test_decode_matches_mxnet_imdecode(mx_run):
    _, job, out = mx_run
    for jpeg, rgb in zip(job["jpegs"], out["decoded"]):
        assert np.abs(decode_bgr(jpeg)[:, :, ::-1].astype(int) - rgb).max() <= 2
    np.testing.assert_allclose(out["decoded"][-1][16, 16], [255, 0, 0], atol=3)  # MXNet: RGB red
    np.testing.assert_allclose(decode_bgr(job["jpegs"][-1])[16, 16], [0, 0, 255], atol=3)  # ours: BGR red


@pytest.mark.parametrize("name", ["np_scalars_2", "np_array_2", "np_scalars_5", "np_array_5"])
def test_load_bin_written_by_mxnet_python(mx_run, name):
    d, job, _ = mx_run
    images, issame = load_bin(d / f"{name}.bin")
    assert images == job["jpegs"][:4] and issame.tolist() == [True, False]
