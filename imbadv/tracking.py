"""MLflow names and provenance, defined once: run names, tags, registry names, artifact paths.

The tracking URI is MLflow's own (MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working
directory). Every run records the resolved config (params `config.<field>`, so they never clash
with the parameters that `mlflow run` logs for an entry point), the git commit of the code,
package versions, device and the dataset digest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.entities import Run

from imbadv import store
from imbadv.config import ModelSelection, as_params
from imbadv.data import ImageDataset

EXPERIMENT = "imbadv"
CONFIG_PARAM_PREFIX = "config."
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# Tags on runs and model versions.
TAG_JOB = "imbadv.job"
TAG_ERROR = "imbadv.error"
TAG_GIT_COMMIT = "imbadv.git_commit"
TAG_CODE_VERSION = "imbadv.code_version"
TAG_DATASET = "imbadv.dataset"
TAG_DATASET_DIGEST = "imbadv.dataset_digest"
TAG_TARGET = "imbadv.target"
TAG_SOURCE = "imbadv.source"
TAG_ATTACK = "imbadv.attack"
TAG_EPS = "imbadv.eps"
TAG_STEP_KEY = "imbadv.step_key"
TAG_TRAIN_KEY = "imbadv.train_key"
TAG_HOST = "imbadv.host"
TAG_PID = "imbadv.pid"
TAG_STUDY_KEY = "imbadv.study_key"

# Artifact paths.
MODEL_ARTIFACT = "model"
CONFIG_ARTIFACT = "config.json"
TRAIN_INDICES_ARTIFACT = "sampling/train_indices.csv"
VAL_INDICES_ARTIFACT = "sampling/val_indices.csv"
CHECKPOINT_ARTIFACT = "checkpoint/last.pt"
CONFUSION_DIR = "confusion"
PER_CLASS_ARTIFACT = "per_class.csv"
GRID_ARTIFACT = "examples/adversarial_grid.png"

PACKAGES = ("torch", "torchvision", "mlflow", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy")


def registered_model_name(dataset: str, sampling: str, class_id: int | None) -> str:
    """`imbadv-<dataset>-balanced`, `imbadv-<dataset>-under-c<k>` or `imbadv-<dataset>-over-c<k>`."""
    suffix = "balanced" if sampling == "balanced" else f"{sampling}-c{class_id}"
    return f"imbadv-{dataset}-{suffix}"


def model_alias(preset: str, seed: int) -> str:
    """Alias of the newest version trained with this preset and seed."""
    return f"{preset}-s{seed}"


def model_uri(selection: ModelSelection, dataset: str) -> str:
    """`models:/<name>@<preset>-s<seed>` of the model a selection names."""
    name = registered_model_name(dataset, selection.sampling, selection.class_id)
    return f"models:/{name}@{model_alias(selection.preset, selection.seed)}"


@functools.cache
def git_commit() -> str:
    """Commit of the checkout the package runs from, with '-dirty' for uncommitted changes.

    Read once per process: it describes the code this process imported."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


PACKAGE_DIR = Path(__file__).resolve().parent


def code_version(package: Path | None = None) -> str:
    """SHA-256 (first 16 hex digits) of the package's own source and reference files.

    Reuse keys depend on this rather than on the git commit, so that edits outside the package
    (docs, tests, benchmarks) leave finished steps reusable, while any change to what is computed
    makes them stale. With no `package`, this package's version, hashed once per process.
    """
    return _own_code_version() if package is None else _hash_source(package)


@functools.cache
def _own_code_version() -> str:
    return _hash_source(PACKAGE_DIR)


def _hash_source(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".csv", ".json") and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def provenance_tags() -> dict[str, str]:
    tags = {TAG_GIT_COMMIT: git_commit(), TAG_CODE_VERSION: code_version(), "imbadv.python": platform.python_version()}
    for package in PACKAGES:
        try:
            tags[f"imbadv.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tags


# Set by a study for the steps it runs: the parent run and the step's reuse key.
_STEP_TAGS: ContextVar[dict[str, str] | None] = ContextVar("imbadv_step_tags", default=None)


@contextmanager
def step_tags(parent_run_id: str, step_key: str) -> Iterator[None]:
    """Runs started inside are nested under `parent_run_id` and carry the step's reuse key."""
    token = _STEP_TAGS.set({"mlflow.parentRunId": parent_run_id, TAG_STEP_KEY: step_key})
    try:
        yield
    finally:
        _STEP_TAGS.reset(token)


def current_step_key() -> str | None:
    """The reuse key of the study step running now, if any."""
    return (_STEP_TAGS.get() or {}).get(TAG_STEP_KEY)


@contextmanager
def job_run(job: str, run_name: str, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """The run a job logs into: `run_id` (resuming it), the one `mlflow run` created, or a new one.

    On any exception the run gets an `imbadv.error` tag and ends FAILED; the exception propagates.
    """
    chosen_elsewhere = mlflow.active_run() is not None or _env_run_id() or os.environ.get("MLFLOW_EXPERIMENT_ID") \
        or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    store.prepare(None if chosen_elsewhere else EXPERIMENT)
    name = None if (_env_run_id() or run_id) else run_name
    run = store.call(mlflow.start_run, run_id=run_id, run_name=name, tags=None if run_id else _STEP_TAGS.get())
    status = "FINISHED"
    try:
        store.call(mlflow.set_tags, {TAG_JOB: job, TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
                                     **provenance_tags()})
        yield run
    except BaseException as error:
        status = "FAILED"
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        store.call(mlflow.set_tag, TAG_ERROR, message[:5000])
        raise
    finally:
        store.call(mlflow.end_run, status)


def process_is_gone(run: Run) -> bool:
    """Whether the process that last wrote to `run` has ended (only knowable on the same host)."""
    if run.info.status == "KILLED":
        return True
    if run.data.tags.get(TAG_HOST) != socket.gethostname():
        return False
    try:
        os.kill(int(run.data.tags.get(TAG_PID, "0")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return int(run.data.tags.get(TAG_PID, "0")) <= 0


def _env_run_id() -> str | None:
    return os.environ.get("MLFLOW_RUN_ID")


def log_config(config: object) -> None:
    """The resolved config, as `config.<field>` params and as `config.json`."""
    mlflow.log_params({CONFIG_PARAM_PREFIX + k: v for k, v in as_params(config).items()})
    mlflow.log_dict(dataclasses.asdict(config), CONFIG_ARTIFACT)


def log_dataset(dataset: ImageDataset, context: str) -> None:
    """Log the dataset as a run input, with its content digest."""
    source = HTTPDatasetSource(CIFAR10_URL) if dataset.source == "cifar10" else \
        LocalArtifactDatasetSource(str(Path(dataset.source).expanduser().resolve()))
    store.call(mlflow.log_input, MetaDataset(source=source, name=dataset.name, digest=dataset.digest[:16]),
               context=context)
    mlflow.set_tags({TAG_DATASET: dataset.name, TAG_DATASET_DIGEST: dataset.digest})


def log_json(values: Any, artifact_path: str) -> None:
    mlflow.log_text(json.dumps(values, indent=2, sort_keys=True), artifact_path)
