"""Shared fixtures: the shared CIFAR-10 JPEG copy, small slices of it, and a temporary MLflow store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
def store(tmp_path, monkeypatch) -> Iterator[str]:
    """A fresh SQLite tracking store and artifact folder; the test runs inside that folder."""
    with _tracking_store(tmp_path, monkeypatch) as uri:
        yield uri


@contextmanager
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


def _group_is_running(pgid: int) -> bool:
    """Whether a process of the group is still there (zombies do not count: they can do nothing more)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: reparented zombies get reaped
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        if group == str(pgid) and state != "Z":
            return True
    return False


@pytest.fixture(scope="session")
def sigkill_group() -> Callable[[subprocess.Popen], None]:
    """SIGKILL a command started with start_new_session=True together with every process it started
    (e.g. a study's workers), and return once none of them is left: what the store holds afterwards
    is all they wrote, and nothing changes it any more."""

    def kill(process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 120  # a safety net: killed processes go in milliseconds
        while _group_is_running(process.pid):
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
