"""Provenance of every run: the git commit, a hash of the package's own code, package versions."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from imbadv.tracking.names import TAG_CODE_VERSION, TAG_GIT_COMMIT

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


def train_key(config: object) -> str:
    """Identity of a training (a TrainConfig): every config value but where it runs, and the code version."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("cache_dir", "device")}
    payload = json.dumps({"config": values, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
