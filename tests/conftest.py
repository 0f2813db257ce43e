"""Shared fixtures: the shared CIFAR-10 JPEG copy, small slices of it, and a temporary MLflow store."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = Path(os.environ.get(
    "IMBADV_TEST_DATA", REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: unit-test tensors are tiny, and on a busy 2-core machine a second
    thread makes each conv call orders of magnitude slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_archive() -> Path:
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
    """The shared archive unpacked (image-folder tree)."""
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
    """A 10-class slice of real CIFAR-10 images: 120 train and 30 test images per class."""
    return make_slice(extracted, tmp_path_factory.mktemp("data") / "cifar10-small", 120, 30)


STATE_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store and artifact folder; the test runs inside that folder."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in STATE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    for name in STATE_VARIABLES:  # mlflow.set_experiment exports the active experiment
        os.environ.pop(name, None)
    mlflow.set_registry_uri(None)  # and set_registry_uri exports the registry: forget both
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


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
