"""Data sources: the archive, image folders, the decoded-array cache, digests and bad data.

Synthetic image folders stand in for CIFAR-10 except in the test that loads the whole archive.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CIFAR10_CLASSES, make_slice
from imbadv.config import ConfigError
from imbadv.core.data import (CACHE_FORMAT, DataError, arrays_digest, channel_stats, class_id_of, dataset_name,
                              load_dataset)

# Digests of CIFAR-10 data before datasets carried groups and statistics: registered models and finished
# runs name their data by these, so they must not change.
SYNTHETIC_DIGEST = "3e2165b51ccad5c3fa3a515091e92e47ceccc1b0c14099920abf1997245af2f3"  # write_synthetic_tree(120, 30)
CIFAR10_JPEG_DIGEST = "33555c148c67ed1168229bcf5d06c2fe67be8fbe572b6fe8bb33db07adaead27"


@pytest.mark.slow
def test_shared_archive_loads_whole_and_in_label_order(shared_archive, session_cache):
    dataset = load_dataset(str(shared_archive), session_cache)
    assert dataset.name == "cifar10-jpeg"
    assert dataset.class_names == CIFAR10_CLASSES
    assert dataset.train_images.shape == (50000, 3, 32, 32) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (10000, 3, 32, 32)
    assert np.bincount(dataset.train_labels).tolist() == [5000] * 10
    assert np.bincount(dataset.test_labels).tolist() == [1000] * 10
    assert len(list((session_cache / "extracted").iterdir())) == 1  # unpacked once, keyed by SHA-256
    assert dataset.digest == CIFAR10_JPEG_DIGEST and dataset.train_groups is None
    again = load_dataset(str(shared_archive), session_cache)  # from the array cache
    assert again.digest == dataset.digest
    assert np.array_equal(again.test_images, dataset.test_images)


def test_folder_and_its_archive_give_the_same_data(synthetic_data, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "cifar10-small"), "gztar", synthetic_data.parent, synthetic_data.name)
    from_folder = load_dataset(str(synthetic_data), tmp_path / "cache")
    from_archive = load_dataset(archive, tmp_path / "cache")
    assert from_archive.name == from_folder.name == "cifar10-small"
    assert from_archive.digest == from_folder.digest
    assert np.array_equal(from_archive.train_images, from_folder.train_images)
    assert len(list((tmp_path / "cache" / "arrays").rglob("*.npz"))) == 2


def test_pixels_are_decoded_in_rgb_channel_first(synthetic_data, tmp_path):
    dataset = load_dataset(str(synthetic_data), tmp_path / "cache")
    first = sorted((synthetic_data / "train" / "airplane").iterdir())[0]
    expected = np.asarray(Image.open(first).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(dataset.train_images[0], expected)


def test_digest_changes_with_the_pixels(synthetic_data, tmp_path):
    a = load_dataset(str(make_slice(synthetic_data, tmp_path / "a" / "d", 3, 2)), tmp_path / "cache")
    b = load_dataset(str(make_slice(synthetic_data, tmp_path / "b" / "d", 4, 2)), tmp_path / "cache")
    assert a.digest != b.digest


def test_a_cifar10_tree_keeps_its_names_digest_and_splits(synthetic_data, tmp_path):
    dataset = load_dataset(str(synthetic_data), tmp_path / "cache")
    assert dataset.class_names == CIFAR10_CLASSES and dataset.train_groups is None
    assert dataset.digest == SYNTHETIC_DIGEST == arrays_digest(
        CIFAR10_CLASSES, dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels)
    assert [p.parent.name for p in (tmp_path / "cache" / "arrays").rglob("*.npz")] == [CACHE_FORMAT]


def test_channel_statistics_are_numpys():
    images = np.random.default_rng(0).integers(0, 256, (300, 3, 32, 32), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=64)
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)


def _manifest(root: Path, column: str = "track", skip: int = 0) -> None:
    """A manifest giving train image i of each class the group i // 2 (the last `skip` rows left out)."""
    rows = [f"train/{c.name}/{f.name},{i // 2}" for c in sorted((root / "train").iterdir())
            for i, f in enumerate(sorted(c.iterdir()))]
    (root / "manifest.csv").write_text("\n".join([f"path,{column}", *rows[:len(rows) - skip]]) + "\n")


def test_prefixed_folders_name_classes_without_the_prefix_and_a_manifest_groups_the_training_images(tmp_path):
    root = _tree(tmp_path / "signs", {"00-speed-limit-20": 4, "01-stop": 3, "yield": 2},
                 {"00-speed-limit-20": 1, "01-stop": 1, "yield": 1})
    plain = load_dataset(str(root), tmp_path / "cache")
    assert plain.class_names == ("speed-limit-20", "stop", "yield") and plain.train_groups is None
    _manifest(root)
    grouped = load_dataset(str(root), tmp_path / "cache")  # a new manifest is new data
    assert grouped.train_groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4]  # (class, group) pairs, numbered in order
    assert grouped.digest != plain.digest and np.array_equal(grouped.train_images, plain.train_images)
    _manifest(root, column="source")  # no group column: no groups
    assert load_dataset(str(root), tmp_path / "cache").train_groups is None


def test_a_class_is_named_by_its_id_or_by_its_datasets_name(tmp_path):
    root = _tree(tmp_path / "signs", {"00-speed-limit-20": 1, "14-stop": 1}, {"00-speed-limit-20": 1, "14-stop": 1})
    assert class_id_of("stop", str(root), tmp_path / "cache") == 1 == class_id_of("1", str(root), tmp_path)
    with pytest.raises(ConfigError, match=r"unknown class 'cat': pass a class id \(0-1\) or one of this dataset's "
                                          r"class names \(speed-limit-20, stop\)"):
        class_id_of("cat", str(root), tmp_path / "cache")
    assert class_id_of("Cat", "cifar10", tmp_path / "nothing") == 3  # CIFAR-10's names need no download
    assert not (tmp_path / "nothing").exists()


def test_a_training_image_missing_from_the_manifest_is_named(tmp_path):
    root = _tree(tmp_path / "signs", {"00-a": 2, "01-b": 2}, {"00-a": 1, "01-b": 1})
    _manifest(root, skip=1)
    with pytest.raises(DataError, match=r"training image train/01-b/1\.png has no row in .*manifest\.csv"):
        load_dataset(str(root), tmp_path / "cache")


def test_two_folders_of_one_class_name_are_refused(tmp_path):
    root = _tree(tmp_path / "signs", {"01-stop": 1, "02-stop": 1}, {"01-stop": 1, "02-stop": 1})
    with pytest.raises(DataError, match=r"name the classes \['stop'\] twice"):
        load_dataset(str(root), tmp_path / "cache")


def test_dataset_names():
    assert dataset_name("cifar10") == "cifar10"
    assert dataset_name("../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz") == "cifar10-jpeg"
    assert dataset_name("/data/my-set/") == "my-set"
    assert dataset_name("x/other.tgz") == "other"


def _tree(root: Path, train: dict[str, int], test: dict[str, int], size=(32, 32)) -> Path:
    for split, classes in (("train", train), ("test", test)):
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", size, (i * 40 % 255, 10, 20)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(("train", "test", "size", "message"), [
    ({"a": 2, "b": 0}, {"a": 1, "b": 1}, (32, 32), "has no images"),
    ({"a": 2, "b": 2}, {"a": 1, "c": 1}, (32, 32), "train and test have different classes"),
    ({"a": 2, "b": 2}, {"a": 1, "b": 1}, (28, 28), "is 28x28: imbadv needs 32x32"),
])
def test_bad_image_folders_are_refused(tmp_path, train, test, size, message):
    root = _tree(tmp_path / "bad", train, test, size)
    with pytest.raises(DataError, match=message):
        load_dataset(str(root), tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing half-written into the cache


def test_unreadable_image_names_the_file(tmp_path):
    root = _tree(tmp_path / "bad", {"a": 1}, {"a": 1})
    (root / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        load_dataset(str(root), tmp_path / "cache")


def test_truncated_archive_is_refused_and_leaves_no_unpacked_folder(synthetic_data, tmp_path):
    archive = Path(shutil.make_archive(str(tmp_path / "whole"), "gztar", synthetic_data.parent, synthetic_data.name))
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"is corrupted or not a \.tar\.gz"):
        load_dataset(str(truncated), tmp_path / "cache")
    assert list((tmp_path / "cache" / "extracted").iterdir()) == []


IN_OPEN = 0x20  # inotify(7)


class _Opens:
    """Counts the opens of one file by any process, from inotify events (Linux)."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")
        self.count = 0

    def wait_for(self, count: int, process: subprocess.Popen, safety_s: float = 120) -> None:
        """Return once `count` opens are seen; fail if `process` ends first or nothing comes for `safety_s`."""
        deadline = time.monotonic() + safety_s
        while self.count < count:
            assert process.poll() is None, f"the loader ended after {self.count} opens of the lock file"
            assert time.monotonic() < deadline, f"{self.count} opens of the lock file in {safety_s} s"
            if select.select([self.fd], [], [], 1.0)[0]:
                self.count += len(os.read(self.fd, 4096)) // 16  # a file's events carry no name: 16 bytes each

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_a_cold_cache_is_filled_by_one_process_while_the_others_wait(synthetic_data, tmp_path):
    """A study's parent and workers load the same archive at once: the second waits for the first's
    cache file instead of unpacking beside it (two unpacks raced on the rename).

    filelock waits by polling (a non-blocking flock, a close and a short sleep, again and again), so no
    waiter shows in /proc/locks: the child's attempts show as opens of the lock file. A second open
    while this process holds the lock means the first attempt was refused and the child tries again.
    """
    import filelock

    from imbadv.core.data import decode_lock, sha256_file

    archive = shutil.make_archive(str(tmp_path / "cifar10-small"), "gztar", synthetic_data.parent, synthetic_data.name)
    cache = tmp_path / "cache"
    loader = ("import sys; from imbadv.core.data import load_dataset; "
              "print(load_dataset(sys.argv[1], sys.argv[2]).digest)")
    lock = decode_lock(cache, f"archive-{sha256_file(archive)}")
    with filelock.FileLock(lock):  # another process decoding
        opens = _Opens(lock)
        try:
            process = subprocess.Popen([sys.executable, "-c", loader, archive, str(cache)], stdout=subprocess.PIPE,
                                       text=True)
            opens.wait_for(2, process)  # refused once, trying again: waiting on the lock
        finally:
            opens.close()
        assert not (cache / "extracted").exists()  # and not unpacking meanwhile
    digest = process.stdout.read().strip()
    assert process.wait(timeout=120) == 0
    assert digest == load_dataset(archive, cache).digest
    assert len(list((cache / "extracted").iterdir())) == 1
