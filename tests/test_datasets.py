"""Training datasets on real on-disk layouts, the two-view wrapper and the DataLoader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from qgface.config import from_dict
from qgface.data.datasets import (
    DatasetLayoutError,
    FolderTrainDataset,
    RecordTrainDataset,
    TwoViewDataset,
    open_train_dataset,
)
from qgface.data.images import encode_jpeg, normalize_bgr, to_network_input
from qgface.data.insightface_rec import write_insightface_rec
from qgface.data.irheader import IRHeader, pack
from qgface.data.loader import build_train_loader
from qgface.data.recordio import RecordIOError, RecordIOWriter
from qgface.data.views import make_views

LABELS = [0, 0, 1, 1, 1, 2]


def colour(i: int) -> tuple[int, int, int]:
    """A distinct flat BGR colour per image (B differs from R so a channel swap is visible)."""
    return (20 + 30 * i, 90, 230 - 20 * i)


def textured(i: int) -> np.ndarray:
    img = np.empty((112, 112, 3), np.uint8)
    img[:] = colour(i)
    img[40:70, 30:50] = 255  # an asymmetric patch, so a mirrored view differs from the original
    return img


def write_rec(root: Path, labels=LABELS) -> None:
    root.mkdir(parents=True, exist_ok=True)
    items = [(encode_jpeg(textured(i), quality=100), label) for i, label in enumerate(labels)]
    write_insightface_rec(root / "train.rec", root / "train.idx", items)


def write_folder(root: Path) -> None:
    names = ["bob", "alice", "carol"]  # sorted: alice=0, bob=1, carol=2
    counts = {"alice": 2, "bob": 3, "carol": 1}
    i = 0
    for name in sorted(names):
        (root / name).mkdir(parents=True)
        for k in range(counts[name]):
            cv2.imwrite(str(root / name / f"{k:03d}.png"), textured(i))
            i += 1
    (root / "README.txt").write_text("not an identity")


def test_record_dataset_labels_colours_and_num_classes(tmp_path):
    write_rec(tmp_path)
    ds = RecordTrainDataset(tmp_path)
    assert len(ds) == 6 and ds.num_classes == 3
    for i, label in enumerate(LABELS):
        img, got = ds[i]
        assert got == label and img.dtype == np.uint8 and img.shape == (112, 112, 3)
        assert np.abs(img[5, 5].astype(int) - colour(i)).max() <= 3  # BGR, not swapped
    with pytest.raises(IndexError):
        ds[6]


def test_folder_dataset_sorted_identities_and_bgr(tmp_path):
    write_folder(tmp_path)
    ds = FolderTrainDataset(tmp_path)
    assert ds.identities == ["alice", "bob", "carol"] and ds.num_classes == 3
    assert [ds[i][1] for i in range(len(ds))] == LABELS
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i][0], textured(i))


def test_open_train_dataset_picks_the_layout_on_disk(tmp_path):
    write_rec(tmp_path / "rec")
    write_folder(tmp_path / "folder")
    assert isinstance(open_train_dataset(tmp_path / "rec"), RecordTrainDataset)
    assert isinstance(open_train_dataset(tmp_path / "folder"), FolderTrainDataset)


def test_bad_roots_raise_one_clear_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist.*train.rec"):
        open_train_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match=r"empty: neither train.rec \+ train.idx"):
        open_train_dataset(tmp_path / "empty")
    (tmp_path / "noidx").mkdir()
    (tmp_path / "noidx" / "train.rec").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="train.idx"):
        open_train_dataset(tmp_path / "noidx")
    (tmp_path / "noimages" / "alice").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="noimages: no image files"):
        open_train_dataset(tmp_path / "noimages")


def test_record_label_outside_the_header_range_names_the_key(tmp_path):
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(0, pack(IRHeader(0, [3, 4], 0, 0), b""))  # 2 images, 1 identity
        writer.write(1, pack(IRHeader(0, 0.0, 1, 0), encode_jpeg(textured(0))))
        writer.write(2, pack(IRHeader(0, 5.0, 2, 0), encode_jpeg(textured(1))))
        writer.write(3, pack(IRHeader(0, [1, 3], 3, 0), b""))
    ds = open_train_dataset(tmp_path)
    assert ds.num_classes == 1 and ds[0][1] == 0
    with pytest.raises(RecordIOError, match=r"train.rec: key 2: identity label 5 is outside \[0, 1\)"):
        ds[1]


def test_unaligned_image_names_the_file(tmp_path):
    (tmp_path / "alice").mkdir()
    cv2.imwrite(str(tmp_path / "alice" / "big.png"), np.zeros((120, 100, 3), np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"big.png: image is 100x120, expected an aligned 112x112"):
        FolderTrainDataset(tmp_path)[0]


@pytest.mark.parametrize("views,count", [("lh", 2), ("adaface", 2), ("flip", 1)])
def test_two_view_dataset_shapes_and_h_view(tmp_path, views, count):
    write_rec(tmp_path)
    cfg = from_dict({"data": {"views": views}}).data
    ds = TwoViewDataset(RecordTrainDataset(tmp_path), views, cfg, seed=0)
    for index in range(len(ds)):
        planes, label = ds[(index, 0)]
        assert planes.dtype == torch.uint8 and tuple(planes.shape) == (count, 3, 112, 112) and label == LABELS[index]
        x = to_network_input(planes)
        assert x.dtype == torch.float32 and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
        if views != "adaface":  # view 0 is the source image, perhaps mirrored, normalised
            src = RecordTrainDataset(tmp_path)[index][0]
            options = [normalize_bgr(src), normalize_bgr(np.ascontiguousarray(src[:, ::-1]))]
            assert any(np.array_equal(x[0].numpy(), o) for o in options)


def test_the_network_sees_the_float_values_of_cpu_normalisation(tmp_path):
    """uint8 batches normalised in the step give bit for bit the float32 input normalize_bgr gives."""
    write_rec(tmp_path)
    cfg = from_dict({}).data
    ds = TwoViewDataset(RecordTrainDataset(tmp_path), "lh", cfg, seed=3)
    base = RecordTrainDataset(tmp_path)
    for index in range(len(ds)):
        views = make_views(base[index][0], np.random.default_rng([3, 1, index]), "lh", cfg)
        expected = np.stack([normalize_bgr(v) for v in views])  # the float32 the loader used to ship
        got = to_network_input(ds[(index, 1)][0]).numpy()
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    every_level = np.stack([levels, levels.T, 255 - levels], axis=-1)  # all 256 values in each channel
    expected = normalize_bgr(every_level)
    got = to_network_input(torch.from_numpy(np.ascontiguousarray(every_level.transpose(2, 0, 1)))).numpy()
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert got[0, 0, 0] == -1.0 and got[0, 15, 15] == 1.0
    with pytest.raises(ValueError, match="uint8"):
        to_network_input(torch.zeros(1, 3, 2, 2))


def test_two_view_dataset_depends_only_on_seed_epoch_index(tmp_path):
    write_rec(tmp_path)
    cfg = from_dict({}).data
    a = TwoViewDataset(RecordTrainDataset(tmp_path), "lh", cfg, seed=7)
    b = TwoViewDataset(RecordTrainDataset(tmp_path), "lh", cfg, seed=7)
    b[(3, 1)]  # order of access must not matter
    assert torch.equal(a[(2, 1)][0], b[(2, 1)][0])
    assert torch.equal(a[2][0], a[(2, 0)][0])
    assert not torch.equal(a[(2, 1)][0][1], a[(2, 2)][0][1])  # a new epoch draws a new L view
    other_seed = TwoViewDataset(RecordTrainDataset(tmp_path), "lh", cfg, seed=8)
    assert not torch.equal(a[(2, 1)][0][1], other_seed[(2, 1)][0][1])


def loader_batches(cfg, root, num_workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg.data.num_workers = num_workers
    loader, sampler, _ = build_train_loader(cfg, root, rank=0, world_size=1)
    out = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        out.extend(loader)
    return out


def test_loader_batches_are_identical_with_zero_and_two_workers(tmp_path):
    write_rec(tmp_path, labels=[0, 0, 1, 1, 2, 2, 3, 3])
    cfg = from_dict({"data": {"batch_size": 3}, "seed": 5})
    serial = loader_batches(cfg, tmp_path, 0)
    parallel = loader_batches(cfg, tmp_path, 2)
    assert len(serial) == len(parallel) == 4  # 8 images, batch 3, drop_last: 2 batches per epoch
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert xs.shape == (3, 2, 3, 112, 112) and ys.dtype == torch.int64
        assert torch.equal(xs, xp) and torch.equal(ys, yp)


def test_loader_reads_an_image_folder(tmp_path):
    write_folder(tmp_path / "data")
    out = tmp_path / "out"
    cfg = from_dict({"data": {"batch_size": 2, "num_workers": 0, "views": "flip"}, "output_root": str(out)})
    loader, sampler, dataset = build_train_loader(cfg, tmp_path / "data", rank=1, world_size=2)
    assert dataset.num_classes == 3 and len(sampler) == 3 and len(loader) == 1
    x, y = next(iter(loader))
    assert x.shape == (2, 1, 3, 112, 112) and set(y.tolist()) <= {0, 1, 2}
    assert [p.suffix for p in (out / "index-cache").iterdir()] == [".folder-index"]  # the cached file list


def test_loader_workers_survive_the_stop_signals_slurm_sends_to_every_process(tmp_path):
    import os
    import signal

    write_rec(tmp_path, labels=[0, 0, 1, 1, 2, 2, 3, 3])
    cfg = from_dict({"data": {"batch_size": 2, "num_workers": 2}})
    loader, sampler, _ = build_train_loader(cfg, tmp_path, rank=0, world_size=1)
    sampler.set_epoch(0)
    batches = iter(loader)
    next(batches), next(batches)  # batches 0 and 1 come from workers 0 and 1: both are set up
    for pid in [worker.pid for worker in batches._workers]:
        for stop_signal in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            os.kill(pid, stop_signal)
    assert len(list(batches)) == 2  # the rest of the epoch still arrives


def test_loader_workers_start_after_the_parent_ran_opencv_threads(tmp_path):
    """A plain fork after OpenCV's thread pool ran hangs the workers; the loader must not."""
    import subprocess
    import sys

    write_rec(tmp_path, labels=[0, 0, 1, 1, 2, 2, 3, 3])
    script = f"""
import cv2, numpy as np
from qgface.config import from_dict
from qgface.data.loader import build_train_loader

def main():
    cv2.setNumThreads(2)
    for _ in range(20):
        cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.uint8), (31, 31), 5)  # runs the parallel pool
    cfg = from_dict({{"data": {{"batch_size": 2, "num_workers": 2}}}})
    loader, sampler, _ = build_train_loader(cfg, {str(tmp_path)!r}, rank=0, world_size=1)
    sampler.set_epoch(0)
    print(len(list(loader)))

main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"
