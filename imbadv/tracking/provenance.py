"""Provenance of every run: the git commit, a hash of the package's own code, package versions."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from imbadv.tracking.names import (TAG_CODE_VERSION, TAG_EVALUATE_CODE_VERSION, TAG_GIT_COMMIT,
                                   TAG_PACKAGE_VERSION_PREFIX, TAG_PYTHON, TAG_TRAIN_CODE_VERSION)

PACKAGES = ("torch", "torchvision", "mlflow", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the imbadv package


@functools.cache
def git_commit() -> str:
    """Commit of the checkout the package runs from, with '-dirty' for uncommitted changes.

    Read once per process: it describes the code this process imported."""
    try:
        commit = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


# The modules, under imbadv/, that decide what a job computes. A training's reuse key hashes only
# those that decide its weights (data, sampling, model, optimiser, trainer, augmentation, grouping)
# beside its resolved config and initial-weights seed; an evaluation's, those that decide its
# numbers and artifacts. Editing the report, the study engine, the CLI or the tracking code reuses
# every finished step. `tests/test_code_parts.py` checks that each part holds every core module its
# modules import.
CODE_PARTS: dict[str, tuple[str, ...]] = {
    "train": ("core/augment.py", "core/data.py", "core/group.py", "core/inference.py", "core/model.py",
              "core/optim.py", "core/remedies.py", "core/sampling.py", "core/trainer.py"),
    "evaluate": ("config.py", "core/attacks.py", "core/data.py", "core/export.py", "core/gradient_pass.py",
                 "core/inference.py", "core/metrics.py", "core/model.py", "core/plots.py", "core/posthoc.py",
                 "jobs/evaluate.py", "jobs/posthoc.py", "jobs/shared.py"),
}


def code_version(package: Path | None = None, part: str | None = None) -> str:
    """SHA-256 (first 16 hex digits) of the package's own source and reference files, or of one
    part's modules (`CODE_PARTS`: "train" or "evaluate").

    Reuse keys depend on this rather than on the git commit, so that edits outside the package
    (docs, tests, benchmarks), or outside a step's part, leave finished steps reusable, while any
    change to what a step computes makes it stale. With no `package`, this package's version,
    hashed once per process.
    """
    if package is None:
        return _own_code_version(part)
    return _hash_source(package) if part is None else _hash_files(package, CODE_PARTS[part])


@functools.cache
def _own_code_version(part: str | None) -> str:
    return code_version(PACKAGE_DIR, part)


def _hash_source(package: Path) -> str:
    paths = [p for p in package.rglob("*") if p.suffix in (".py", ".csv", ".json") and p.is_file()]
    return _hash_files(package, [p.relative_to(package).as_posix() for p in paths])


def _hash_files(package: Path, files: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_versions() -> dict[str, str]:
    """By entry point, the version of the code that decides its results: what its reuse keys hash."""
    return {part: code_version(part=part) for part in CODE_PARTS}


def provenance_tags() -> dict[str, str]:
    tags = {TAG_GIT_COMMIT: git_commit(), TAG_CODE_VERSION: code_version(), TAG_PYTHON: platform.python_version(),
            TAG_TRAIN_CODE_VERSION: code_version(part="train"),
            TAG_EVALUATE_CODE_VERSION: code_version(part="evaluate")}
    for package in PACKAGES:
        try:
            tags[TAG_PACKAGE_VERSION_PREFIX + package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tags


def train_key(config: Any) -> str:
    """Identity of a training (a TrainConfig): every config value but where it runs, the seed of its
    initial weights, and the version of the code that decides its weights (`CODE_PARTS["train"]`)."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("cache_dir", "device")}
    payload = json.dumps({"config": values, "init_seed": config.init_seed, "code": code_version(part="train")},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
