"""The cached file list of an image-folder training set: same order as a listing, mapped, invalidated."""

from __future__ import annotations

import os
import pickle
import time

import cv2
import numpy as np
import pytest

from qgface.config import from_dict
from qgface.data.datasets import IMAGE_EXTENSIONS, FolderTrainDataset
from qgface.data.folder_index import (
    build_folder_index,
    ensure_folder_index,
    folder_index_is_current,
    folder_index_path,
    open_folder_index,
    save_folder_index,
)
from qgface.data.loader import build_train_loader

FILES = {
    "id_b": ["2.jpg", "10.png", "x.txt"],
    "id_a": ["b.jpg", "a.JPG"],
    "id_c": [],
    "élan": ["ü.png"],
    ".hidden": ["z.jpg"],
}


def write_tree(root):
    for ident, names in FILES.items():
        (root / ident).mkdir(parents=True)
        for name in names:
            (root / ident / name).write_bytes(b"")


def listing(root):
    """The (path, label) pairs by the rule, written out: sorted identity folders, sorted image names."""
    out = []
    identities = sorted(n for n in os.listdir(root) if (root / n).is_dir() and not n.startswith("."))
    for label, ident in enumerate(identities):
        names = sorted(
            (n for n in os.listdir(root / ident) if n.lower().endswith(IMAGE_EXTENSIONS)), key=lambda n: n.encode()
        )
        out += [(str(root / ident / n), label) for n in names]
    return identities, out


def test_index_lists_like_the_rule_and_survives_a_file_round_trip(tmp_path):
    write_tree(tmp_path / "set")
    identities, expected = listing(tmp_path / "set")
    built = build_folder_index(tmp_path / "set", IMAGE_EXTENSIONS)
    save_folder_index(built, tmp_path / "i.folder-index")
    for index in (built, open_folder_index(tmp_path / "i.folder-index")):
        assert [index.identity(c) for c in range(index.num_classes)] == identities == ["id_a", "id_b", "id_c", "élan"]
        assert [(index.path(i), index.label(i)) for i in range(index.num_images)] == expected
    assert [(p[len(str(tmp_path / "set")) + 1 :], y) for p, y in expected] == [
        ("id_a/a.JPG", 0),
        ("id_a/b.jpg", 0),
        ("id_b/10.png", 1),
        ("id_b/2.jpg", 1),
        ("élan/ü.png", 3),
    ]


def test_index_is_stale_after_a_file_or_an_identity_is_added_or_removed(tmp_path):
    root = tmp_path / "set"
    write_tree(root)
    index = build_folder_index(root, IMAGE_EXTENSIONS)
    assert folder_index_is_current(index, root)
    for change in (
        lambda: (root / "id_c" / "new.jpg").write_bytes(b""),
        lambda: (root / "id_a" / "b.jpg").unlink(),
        lambda: (root / "id_d").mkdir(),
    ):
        time.sleep(0.01)  # a later modification time on filesystems with coarse timestamps
        change()
        assert not folder_index_is_current(index, root)
        index = build_folder_index(root, IMAGE_EXTENSIONS)
        assert folder_index_is_current(index, root)
    assert not folder_index_is_current(index, tmp_path)  # another folder


def test_ensure_lists_once_reuses_the_file_and_rebuilds_it_when_the_folder_changed(tmp_path):
    root, cache = tmp_path / "set", tmp_path / "cache"
    write_tree(root)
    path = ensure_folder_index(root, cache, IMAGE_EXTENSIONS)
    assert path == folder_index_path(cache, root) and path.is_file()
    written = path.stat().st_mtime_ns, path.stat().st_ino
    assert ensure_folder_index(root, cache, IMAGE_EXTENSIONS) == path
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == written  # reused, not rewritten
    time.sleep(0.01)
    (root / "id_c" / "late.jpg").write_bytes(b"")
    ensure_folder_index(root, cache, IMAGE_EXTENSIONS)
    assert path.stat().st_ino != written[1]  # replaced atomically (a new file renamed over it)
    assert open_folder_index(path).num_images == 6
    path.write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    assert open_folder_index(ensure_folder_index(root, cache, IMAGE_EXTENSIONS)).num_images == 6


def test_a_mapped_dataset_pickles_its_path_not_its_list(tmp_path):
    root = tmp_path / "set"
    for ident in range(50):
        (root / f"{ident:03d}").mkdir(parents=True)
        for k in range(40):
            cv2.imwrite(str(root / f"{ident:03d}" / f"{k:04d}.png"), np.full((112, 112, 3), ident, np.uint8))
    path = ensure_folder_index(root, tmp_path / "cache", IMAGE_EXTENSIONS)
    mapped, listed = FolderTrainDataset(root, path), FolderTrainDataset(root)
    assert len(mapped) == len(listed) == 2000
    blob = pickle.dumps(mapped)
    assert len(blob) < 1000 < len(pickle.dumps(listed))  # a spawned worker receives only the path
    clone = pickle.loads(blob)
    for i in (0, 39, 40, 1999):
        img, label = clone[i]
        assert label == i // 40 and img[0, 0, 0] == i // 40
        assert listed[i][1] == label


def test_train_loader_lists_the_folder_into_the_output_cache_once(tmp_path):
    root = tmp_path / "set"
    write_tree(root)
    for name in ("b.jpg", "a.JPG"):
        cv2.imwrite(str(root / "id_a" / name), np.zeros((112, 112, 3), np.uint8))
    (root / "id_b" / "2.jpg").unlink(), (root / "id_b" / "10.png").unlink(), (root / "élan" / "ü.png").unlink()
    cfg = from_dict({"data": {"batch_size": 1, "num_workers": 0, "views": "flip"}, "output_root": str(tmp_path / "o")})
    _, _, first = build_train_loader(cfg, root, rank=0, world_size=1)
    cached = folder_index_path(tmp_path / "o" / "index-cache", root)
    inode = cached.stat().st_ino
    _, _, second = build_train_loader(cfg, root, rank=0, world_size=1)
    assert cached.stat().st_ino == inode and len(first) == len(second) == 2
    assert first.base.index_path == cached and first.num_classes == 4


@pytest.mark.parametrize("bad", [b"", b"QGFACE-FOLDER-INDEX-0\n"])
def test_a_foreign_file_is_refused_by_name(tmp_path, bad):
    (tmp_path / "x.folder-index").write_bytes(bad + b"\0" * 64)
    with pytest.raises(ValueError, match=r"x\.folder-index: not a qgface folder index"):
        open_folder_index(tmp_path / "x.folder-index")
