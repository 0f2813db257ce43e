"""Data sources behind one `--data` value, decoded once into cached uint8 arrays (section 3.1).

`cifar10` is torchvision's CIFAR-10 (downloaded into the cache); a directory is an image-folder
tree (`train/<class>/*`, `test/<class>/*`); a `.tar.gz` holds such a tree and is unpacked once,
keyed by its SHA-256. Class order is the sorted class folders, which for CIFAR-10 is its label order;
a folder's `NN-` prefix orders it and is not part of the class name (GTSRB's `14-stop` is `stop`).

Beside the pixels the cache holds the training set's per-channel mean and standard deviation and,
when the tree ships a `manifest.csv` with a `group` or `track` column, each training image's group:
frames of one physical sign (GTSRB's tracks) that a validation split must keep whole.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import filelock
import numpy as np
from PIL import Image, UnidentifiedImageError

from imbadv.config import CIFAR10_CLASSES, first_line, parse_class_id

IMAGE_SHAPE = (3, 32, 32)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
CACHE_FORMAT = "v2"  # bump when the cached array layout changes (v2: training-set statistics, groups)
CLASS_PREFIX = re.compile(r"^\d+-(?=.)")  # `14-stop`: the id that orders the folders, not part of the name
MANIFEST = "manifest.csv"  # beside train/ and test/: one row per image, `path` relative to the tree's root
GROUP_COLUMNS = ("group", "track")  # the manifest column naming an image's group (within its class)


class DataError(ValueError):
    """Bad or unreachable data; the message names the problem and the fix."""


@dataclass(frozen=True)
class ImageDataset:
    """A train/test split as uint8 arrays of shape (N, 3, 32, 32) with int64 labels.

    `train_mean` and `train_std` are the training images' per-channel (R, G, B) statistics on the
    0-1 scale; `train_groups` is an int64 group id per training image (unique across classes), or
    None when the data names no groups.
    """

    name: str
    source: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    digest: str
    train_mean: tuple[float, ...]
    train_std: tuple[float, ...]
    train_groups: np.ndarray | None = None

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
    with np.load(_cache_entry(data, Path(cache_dir).expanduser()), allow_pickle=False) as arrays:
        groups = arrays["train_groups"] if "train_groups" in arrays.files else None
        return ImageDataset(
            name=dataset_name(data), source=data,
            class_names=tuple(str(c) for c in arrays["class_names"]),
            train_images=arrays["train_images"], train_labels=arrays["train_labels"],
            test_images=arrays["test_images"], test_labels=arrays["test_labels"],
            digest=str(arrays["digest"]), train_mean=tuple(arrays["train_mean"].tolist()),
            train_std=tuple(arrays["train_std"].tolist()), train_groups=groups)


def dataset_class_names(data: str, cache_dir: str | Path) -> tuple[str, ...]:
    """`data`'s class names in label order, without reading its pixels (decoded into the cache if absent)."""
    if data == "cifar10":
        return CIFAR10_CLASSES  # torchvision's order: naming a class needs no download
    with np.load(_cache_entry(data, Path(cache_dir).expanduser()), allow_pickle=False) as arrays:
        return tuple(str(c) for c in arrays["class_names"])


def class_id_of(value: str | int | None, data: str, cache_dir: str | Path) -> int | None:
    """`--class-id` as a label: an id as given; a name among `data`'s class names (CIFAR-10's known
    without loading it, any other dataset's once its folders are read)."""
    if value is None or isinstance(value, int) or value.strip().lstrip("-").isdigit() or data == "cifar10":
        return parse_class_id(value)
    return parse_class_id(value, dataset_class_names(data, cache_dir))


def _cache_entry(data: str, cache: Path) -> Path:
    """The array-cache file of `data`, decoded into it first if it is not there yet."""
    if data == "cifar10":
        return _cached(cache, "cifar10-torchvision", lambda: _decode_torchvision(cache))
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"data path {data} does not exist: pass --data cifar10, an image-folder "
                        "directory (train/<class>/, test/<class>/) or a .tar.gz of one")
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise DataError(f"data file {data} is not a .tar.gz: pass an image-folder directory or "
                            "a .tar.gz of one")
        archive_sha = sha256_file(path)
        return _cached(cache, f"archive-{archive_sha}", lambda: _decode_folder(_unpack(path, archive_sha, cache)))
    root = _image_folder_root(path, data)
    return _cached(cache, f"folder-{_listing_digest(root)}", lambda: _decode_folder(root))


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


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images (N, C, H, W), on the 0-1
    scale: exact integer sums over chunks, so 50,000 images need no float copy."""
    total = np.zeros(images.shape[1], np.int64)
    squares = np.zeros(images.shape[1], np.int64)  # at most 2^63 / 255^2 pixels per channel
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].astype(np.int64)
        total += block.sum(axis=(0, 2, 3))
        squares += (block * block).sum(axis=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = tuple(int(t) / n / 255 for t in total)
    var = tuple((n * int(q) - int(t) ** 2) / n**2 for t, q in zip(total, squares, strict=True))  # exact ints
    return mean, tuple(v**0.5 / 255 for v in var)


class Decoded(NamedTuple):
    """What a decoder gives: class names, the two splits and the training images' groups (or None)."""

    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_groups: np.ndarray | None = None


def _cached(cache: Path, key: str, decode) -> Path:
    path = cache / "arrays" / CACHE_FORMAT / f"{key}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # one process decodes (and unpacks); the others of a study wait for its file instead of racing it
        with filelock.FileLock(decode_lock(cache, key)):
            if not path.exists():
                _decode_to(path, decode)
    return path


def decode_lock(cache: Path, key: str) -> Path:
    """The lock a process holds while it fills the array cache entry `key`."""
    folder = cache / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"data-{key}.lock"


def _decode_to(path: Path, decode) -> None:
    data: Decoded = decode()
    arrays = [data.train_images, data.train_labels, data.test_images, data.test_labels]
    groups = {} if data.train_groups is None else {"train_groups": data.train_groups}
    mean, std = channel_stats(data.train_images)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp.npz", delete=False) as tmp:
        # groups enter the digest only where there are some: a dataset without keeps the digest it had
        np.savez(tmp, class_names=np.array(data.class_names), train_images=data.train_images,
                 train_labels=data.train_labels, test_images=data.test_images, test_labels=data.test_labels,
                 digest=np.array(arrays_digest(data.class_names, *arrays, *groups.values())),
                 train_mean=np.array(mean), train_std=np.array(std), **groups)
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
    return Decoded(tuple(train.classes), as_nchw(train.data), np.asarray(train.targets, np.int64),
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


def class_name(folder: str) -> str:
    """A class folder's class name: the folder name without a leading `NN-` (`14-stop` -> `stop`)."""
    return CLASS_PREFIX.sub("", folder)


def _listing_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for name, files in _class_folders(root / split).items():
            for file in files:
                stat = file.stat()
                digest.update(f"{split}/{name}/{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    if (manifest := root / MANIFEST).is_file():  # only then: a tree without one keeps its cache key
        stat = manifest.stat()
        digest.update(f"{MANIFEST}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
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
    folders = tuple(sorted(train))
    class_names = tuple(class_name(folder) for folder in folders)
    if len(set(class_names)) < len(class_names):
        twice = sorted({n for n in class_names if class_names.count(n) > 1})
        raise DataError(f"class folders of {root / 'train'} name the classes {twice} twice once their NN- prefix "
                        "is dropped: rename the folders so that each class has one name")
    train_x, train_y = _decode_split(train, folders)
    test_x, test_y = _decode_split(test, folders)
    groups = _train_groups(root, [f for folder in folders for f in train[folder]])
    return Decoded(class_names, train_x, train_y, test_x, test_y, groups)


def _train_groups(root: Path, files: list[Path]) -> np.ndarray | None:
    """Each training file's group from the manifest, as ids numbering the (class folder, group) pairs in
    file order; None without a manifest or without a group column."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return None
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        column = next((c for c in GROUP_COLUMNS if c in (reader.fieldnames or ())), None)
        if column is None:
            return None
        if "path" not in (reader.fieldnames or ()):
            raise DataError(f"{manifest} has a {column} column but no path column: add the path of each image "
                            "relative to the tree's root, or remove the manifest")
        group_of = {row["path"]: row[column] for row in reader}
    ids: dict[tuple[str, str], int] = {}
    out = np.empty(len(files), np.int64)
    for i, file in enumerate(files):
        path = file.relative_to(root).as_posix()
        if path not in group_of:
            raise DataError(f"training image {path} has no row in {manifest}: add its row or remove the manifest")
        out[i] = ids.setdefault((file.parent.name, group_of[path]), len(ids))
    return out


def _decode_split(classes: dict[str, list[Path]], folders: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    files = [f for name in folders for f in classes[name]]
    labels = np.array([k for k, name in enumerate(folders) for _ in classes[name]], np.int64)
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
