"""Shared fixtures: synthetic image folders, the shared CIFAR-10 JPEG copy and slices of it, a temporary
MLflow store, a real `mlflow server`.

Tests that only need the plumbing (loading, training, registering, attacking) use `synthetic_data`.
Tests that need real images use `shared_archive`, `extracted` or `small_data`: they need the CIFAR-10
archive (IMBADV_TEST_DATA) and carry the `cifar10` marker, added at collection (`-m "not cifar10"`
leaves them out). Tests of GTSRB's shape (class-folder prefixes, tracks, natural imbalance) use
`gtsrb_small`, a slice streamed out of the GTSRB archive (IMBADV_TEST_GTSRB; marker `gtsrb`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from imbadv.tracking.ui import group_alive

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = Path(os.environ.get(
    "IMBADV_TEST_DATA", REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"))

SHARED_GTSRB = Path(os.environ.get(
    "IMBADV_TEST_GTSRB", REPO.parent / "shared" / "datasets" / "gtsrb32" / "gtsrb32.tar.gz"))
# The GTSRB slice: training tracks kept per class folder (every frame of each), the rarest class (0), the most
# common (2) and two between; and test images per class.
GTSRB_SLICE_TRACKS = {"00-speed-limit-20": 3, "02-speed-limit-50": 5, "14-stop": 4, "19-curve-left": 3}
GTSRB_SLICE_TEST = 10


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cifar10: needs the CIFAR-10 archive named by IMBADV_TEST_DATA (added "
                                       "to every test that uses it)")
    config.addinivalue_line("markers", "gtsrb: needs the GTSRB archive named by IMBADV_TEST_GTSRB (added to every "
                                       "test that uses it)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "shared_archive" in getattr(item, "fixturenames", ()):  # also through `extracted` or `small_data`
            item.add_marker(pytest.mark.cifar10)
        if "gtsrb_archive" in getattr(item, "fixturenames", ()):  # also through `gtsrb_small`
            item.add_marker(pytest.mark.gtsrb)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: unit-test tensors are tiny, and on a busy 2-core machine a second
    thread makes each conv call orders of magnitude slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_synthetic_tree(dest: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """An image-folder tree of CIFAR-10's shape: train/<class>/*.png and test/<class>/*.png, 32x32 RGB,
    the ten CIFAR-10 class names.

    Each class has a colour and a stripe direction and period of its own; every image is its class's
    pattern at a random phase plus Gaussian noise (sd 60 of 255): the smoke preset's two epochs learn
    it (test accuracy about 0.9 to 1.0) with margins thin enough that white-box and transferred FGSM
    images at eps 0.01 lower the accuracy. The same arguments give the same files, bit for bit.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32].astype(np.float64)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k, name in enumerate(CIFAR10_CLASSES):
            angle, period = np.pi * k / 10, 4.0 + 2.0 * (k % 3)
            colour = 128 + 40 * np.cos(2 * np.pi * (k / 10 + np.array([0.0, 1 / 3, 2 / 3])))
            folder = dest / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                phase = rng.uniform(0, 2 * np.pi)
                stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
                pixels = colour + 30 * stripes[..., None] + rng.normal(0, 60, (32, 32, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return dest


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """Synthetic images in a CIFAR-10 image-folder tree: 120 train and 30 test images per class, no
    archive needed. The folder is named like the real slice (`cifar10-small`) so that dataset and
    registered-model names are the same whichever of the two a test uses."""
    return write_synthetic_tree(tmp_path_factory.mktemp("synthetic") / "cifar10-small", 120, 30)


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    """The CIFAR-10 JPEG archive (IMBADV_TEST_DATA); a test that uses it needs real images."""
    if not SHARED_ARCHIVE.exists():
        raise FileNotFoundError(f"the test data {SHARED_ARCHIVE} is missing: set IMBADV_TEST_DATA to the "
                                "CIFAR-10 JPEG archive")
    return SHARED_ARCHIVE


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One array cache for the whole session, so the full archive is decoded once."""
    return tmp_path_factory.mktemp("imbadv-cache")


@pytest.fixture(scope="session")
def extracted(shared_archive, tmp_path_factory) -> Path:
    """The shared archive unpacked (image-folder tree); needs the CIFAR-10 archive."""
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(shared_archive) as tar:
        tar.extractall(root, filter="data")
    return root


def make_slice(extracted: Path, dest: Path, train_per_class: int, test_per_class: int,
               classes: list[str] | None = None) -> Path:
    """An image-folder tree with the first N real images per class of each split."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted((extracted / split).iterdir()):
            if classes is not None and class_dir.name not in classes:
                continue
            target = dest / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                shutil.copy(image, target / image.name)
    return dest


@pytest.fixture(scope="session")
def small_data(extracted, tmp_path_factory) -> Path:
    """A 10-class slice of real CIFAR-10 images: 120 train and 30 test images per class; needs the archive.
    Tests that only need the plumbing use `synthetic_data`."""
    return make_slice(extracted, tmp_path_factory.mktemp("data") / "cifar10-small", 120, 30)


@pytest.fixture(scope="session")
def gtsrb_archive() -> Path:
    """The GTSRB archive (IMBADV_TEST_GTSRB)."""
    if not SHARED_GTSRB.exists():
        raise FileNotFoundError(f"the test data {SHARED_GTSRB} is missing: set IMBADV_TEST_GTSRB to the GTSRB "
                                "archive (gtsrb32.tar.gz)")
    return SHARED_GTSRB


def make_gtsrb_slice(archive: Path, dest: Path, tracks: dict[str, int], test_per_class: int) -> Path:
    """A GTSRB-shaped tree streamed out of the archive, nothing else unpacked: for each class folder in
    `tracks`, every frame of its first N training tracks and its first `test_per_class` test images, and
    `manifest.csv` with the rows of those files."""
    def members(tar: tarfile.TarFile) -> Iterator[tuple[str, tarfile.TarInfo]]:
        for member in tar:
            yield member.name.removeprefix("./"), member

    with tarfile.open(archive, "r:gz") as tar:  # the manifest comes first: read it, stop
        manifest = next(tar.extractfile(m) for name, m in members(tar) if name == "manifest.csv")
        header, *rows = [line.split(",") for line in manifest.read().decode().splitlines()]
    column = {name: i for i, name in enumerate(header)}
    kept_tracks: dict[str, list[str]] = {folder: [] for folder in tracks}
    tests: dict[str, int] = dict.fromkeys(tracks, 0)
    wanted = []
    for row in rows:
        split, path = row[column["split"]], row[column["path"]]
        folder = path.split("/")[1]
        if folder not in tracks:
            continue
        if split == "train":
            track, kept = row[column["track"]], kept_tracks[folder]
            if track not in kept and len(kept) < tracks[folder]:
                kept.append(track)
            if track in kept:
                wanted.append(row)
        elif tests[folder] < test_per_class:
            tests[folder] += 1
            wanted.append(row)
    paths = {row[column["path"]] for row in wanted}
    with tarfile.open(archive, "r:gz") as tar:
        for name, member in members(tar):
            if name in paths:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                (dest / name).write_bytes(tar.extractfile(member).read())
                paths.discard(name)
                if not paths:
                    break
    assert not paths, f"{len(paths)} files of the manifest are missing from {archive}"
    (dest / "manifest.csv").write_text("\n".join(",".join(row) for row in [header, *wanted]) + "\n")
    return dest


@pytest.fixture(scope="session")
def gtsrb_small(gtsrb_archive, tmp_path_factory) -> Path:
    """A GTSRB slice (`GTSRB_SLICE_TRACKS`: 450 training images in 15 tracks of 4 classes, 40 test images)
    named like the dataset (`gtsrb32-small`); streamed out of the archive once per session."""
    return make_gtsrb_slice(gtsrb_archive, tmp_path_factory.mktemp("gtsrb") / "gtsrb32-small", GTSRB_SLICE_TRACKS,
                            GTSRB_SLICE_TEST)


STATE_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture
def store(tmp_path, monkeypatch) -> Iterator[str]:
    """A fresh SQLite tracking store and artifact folder; the test runs inside that folder."""
    with _tracking_store(tmp_path, monkeypatch) as uri:
        yield uri


@contextlib.contextmanager
def _tracking_store(folder: Path, patch: pytest.MonkeyPatch) -> Iterator[str]:
    """What `store` does, for any scope: a SQLite store in `folder`, which becomes the working directory."""
    patch.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in STATE_VARIABLES:
        patch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        for name in STATE_VARIABLES:  # mlflow.set_experiment exports the active experiment
            os.environ.pop(name, None)
        mlflow.set_registry_uri(None)  # and set_registry_uri exports the registry: forget both
        os.environ.pop("MLFLOW_REGISTRY_URI", None)


def complete(process: subprocess.Popen, output: Path, timeout: float = 1200) -> str:
    """Wait for a command to end (`timeout` is only a safety net), assert it succeeded, return its output."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    text = output.read_text()
    assert process.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def module_store(tmp_path_factory) -> Iterator[str]:
    """`store` shared by the tests of one module (e.g. several checks of one finished study).

    A function-scoped `store` test in the same module repoints MLflow's process-wide URIs, so tests
    on this store should name it: MlflowClient(module_store, module_store) and MLFLOW_TRACKING_URI
    in the environment of the commands they start.
    """
    with pytest.MonkeyPatch.context() as patch, _tracking_store(tmp_path_factory.mktemp("store"), patch) as uri:
        yield uri


@pytest.fixture(scope="session")
def sigkill_group() -> Callable[[subprocess.Popen], None]:
    """SIGKILL a command started with start_new_session=True together with every process it started
    (e.g. a study's workers), and return once none of them is left: what the store holds afterwards
    is all they wrote, and nothing changes it any more."""

    def kill(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group has ended (the command killed itself)
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 120  # a safety net: killed processes go in milliseconds
        while group_alive(process.pid):
            assert time.monotonic() < deadline, f"process group {process.pid} still runs 120 s after SIGKILL"
            time.sleep(0.05)

    return kill


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (PostgreSQL-backed in CI), stopped at the end, also on failure."""
    from tracking_server import TrackingServer

    server = TrackingServer(tmp_path_factory.mktemp("tracking-server"))
    try:
        server.start()
        yield server
    finally:
        server.close()
