"""Data sources behind one `--data` value, decoded once into cached uint8 arrays (section 3.1).

`cifar10` is torchvision's CIFAR-10 (downloaded into the cache); a directory is an image-folder
tree (`train/<class>/*`, `test/<class>/*`); a `.tar.gz` holds such a tree and is unpacked once,
keyed by its SHA-256. Class order is the sorted class names, which for CIFAR-10 is its label order.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np
from PIL import Image, UnidentifiedImageError

from imbadv.config import first_line

IMAGE_SHAPE = (3, 32, 32)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
CACHE_FORMAT = "v1"  # bump when the cached array layout changes


class DataError(ValueError):
    """Bad or unreachable data; the message names the problem and the fix."""


@dataclass(frozen=True)
class ImageDataset:
    """A train/test split as uint8 arrays of shape (N, 3, 32, 32) with int64 labels."""

    name: str
    source: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    digest: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def dataset_name(data: str) -> str:
    """Registry-friendly dataset name: 'cifar10', or the folder or archive name without suffix."""
    if data == "cifar10":
        return "cifar10"
    base = Path(data.rstrip("/")).name
    for suffix in ARCHIVE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def load_dataset(data: str, cache_dir: str | Path) -> ImageDataset:
    """Load `data` ('cifar10', an image-folder directory or a .tar.gz of one) via the array cache."""
    cache = Path(cache_dir).expanduser()
    if data == "cifar10":
        return _cached(cache, "cifar10-torchvision", data, lambda: _decode_torchvision(cache))
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"data path {data} does not exist: pass --data cifar10, an image-folder "
                        "directory (train/<class>/, test/<class>/) or a .tar.gz of one")
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise DataError(f"data file {data} is not a .tar.gz: pass an image-folder directory or "
                            "a .tar.gz of one")
        archive_sha = sha256_file(path)
        return _cached(cache, f"archive-{archive_sha}", data,
                       lambda: _decode_folder(_unpack(path, archive_sha, cache)))
    root = _image_folder_root(path, data)
    return _cached(cache, f"folder-{_listing_digest(root)}", data, lambda: _decode_folder(root))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def arrays_digest(class_names: tuple[str, ...], *arrays: np.ndarray) -> str:
    """SHA-256 over class names and array contents: equal digests mean identical data."""
    digest = hashlib.sha256("\n".join(class_names).encode())
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


Decoded = tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _cached(cache: Path, key: str, source: str, decode) -> ImageDataset:
    path = cache / "arrays" / CACHE_FORMAT / f"{key}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # one process decodes (and unpacks); the others of a study wait for its file instead of racing it
        with filelock.FileLock(decode_lock(cache, key)):
            if not path.exists():
                _decode_to(path, decode)
    with np.load(path, allow_pickle=False) as arrays:
        return ImageDataset(
            name=dataset_name(source), source=source,
            class_names=tuple(str(c) for c in arrays["class_names"]),
            train_images=arrays["train_images"], train_labels=arrays["train_labels"],
            test_images=arrays["test_images"], test_labels=arrays["test_labels"],
            digest=str(arrays["digest"]))


def decode_lock(cache: Path, key: str) -> Path:
    """The lock a process holds while it fills the array cache entry `key`."""
    folder = cache / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"data-{key}.lock"


def _decode_to(path: Path, decode) -> None:
    class_names, train_x, train_y, test_x, test_y = decode()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp.npz", delete=False) as tmp:
        np.savez(tmp, class_names=np.array(class_names), train_images=train_x,
                 train_labels=train_y, test_images=test_x, test_labels=test_y,
                 digest=np.array(arrays_digest(class_names, train_x, train_y, test_x, test_y)))
    os.replace(tmp.name, path)  # atomic: a killed decode leaves no half-written cache


def _decode_torchvision(cache: Path) -> Decoded:
    from torchvision.datasets import CIFAR10

    root = cache / "torchvision"
    try:
        train = CIFAR10(root, train=True, download=True)
        test = CIFAR10(root, train=False, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        reason = first_line(error)
        raise DataError(f"could not download CIFAR-10 ({reason}): with no internet, pass --data "
                        "PATH to a local image-folder copy or its .tar.gz") from error
    as_nchw = lambda images: np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # noqa: E731
    return (tuple(train.classes), as_nchw(train.data), np.asarray(train.targets, np.int64),
            as_nchw(test.data), np.asarray(test.targets, np.int64))


def _unpack(archive: Path, archive_sha: str, cache: Path) -> Path:
    target = cache / "extracted" / archive_sha
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"archive {archive} is corrupted or not a .tar.gz ({error}): "
                            "re-download or re-create it") from error
        os.replace(staging, target)
    return _image_folder_root(target, str(archive))


def _image_folder_root(path: Path, shown: str) -> Path:
    """The folder holding train/ and test/: `path` itself or its single subfolder."""
    candidates = [path] + [p for p in sorted(path.iterdir()) if p.is_dir()]
    for candidate in candidates:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise DataError(f"{shown} is not an image-folder tree: it needs train/<class>/ and "
                    "test/<class>/ folders of images")


def _class_folders(split_dir: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    return {folder.name: sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for folder in folders}


def _listing_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for name, files in _class_folders(root / split).items():
            for file in files:
                stat = file.stat()
                digest.update(f"{split}/{name}/{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_folder(root: Path) -> Decoded:
    train = _class_folders(root / "train")
    test = _class_folders(root / "test")
    if not train:
        raise DataError(f"{root / 'train'} has no class folders: add train/<class>/ folders of images")
    if sorted(train) != sorted(test):
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise DataError(f"train and test have different classes (only in train: {only_train}, only in "
                        f"test: {only_test}): give both splits the same class folders")
    for split, classes in (("train", train), ("test", test)):
        for name, files in classes.items():
            if not files:
                raise DataError(f"class folder {root / split / name} has no images: add images or "
                                "remove the folder from both splits")
    class_names = tuple(sorted(train))
    train_x, train_y = _decode_split(train, class_names)
    test_x, test_y = _decode_split(test, class_names)
    return class_names, train_x, train_y, test_x, test_y


def _decode_split(classes: dict[str, list[Path]], class_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    files = [f for name in class_names for f in classes[name]]
    labels = np.array([k for k, name in enumerate(class_names) for _ in classes[name]], np.int64)
    images = np.empty((len(files), *IMAGE_SHAPE), np.uint8)

    def decode(index: int) -> None:
        images[index] = _read_image(files[index])

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(decode, range(len(files))))
    return images, labels


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.size != IMAGE_SHAPE[1:]:
                raise DataError(f"image {path} is {image.size[0]}x{image.size[1]}: imbadv needs 32x32 "
                                "images (resize the dataset first)")
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot read image {path} ({error}): remove or replace the file") from error
    return pixels.transpose(2, 0, 1)
