"""Every MLflow write of the jobs, the study and the report, each retried while the store is busy
(`store.call`); and what every run logs about its inputs: the resolved config, the dataset with
its digest, the device.

The writes go to the active run, or to `run_id` where one is given. The config is logged as params
`config.<field>` (so they never clash with the parameters that `mlflow run` logs for an entry
point) and as `config.json`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.tracking import MlflowClient

from imbadv.config import as_params
from imbadv.core.data import ImageDataset
from imbadv.core.inference import check_bf16
from imbadv.tracking import store
from imbadv.tracking.names import (CIFAR10_URL, CONFIG_ARTIFACT, CONFIG_PARAM_PREFIX, TAG_BF16_NATIVE, TAG_DATASET,
                                   TAG_DATASET_DIGEST, TAG_DEVICE, TAG_THREADS)


def metrics(values: Mapping[str, float], step: int | None = None) -> None:
    store.call(mlflow.log_metrics, dict(values), step=step)


def params(values: Mapping[str, Any]) -> None:
    store.call(mlflow.log_params, dict(values))


def tags(values: Mapping[str, str]) -> None:
    store.call(mlflow.set_tags, dict(values))


def text(content: str, artifact_path: str) -> None:
    """`content` as the artifact file `artifact_path`."""
    store.call(mlflow.log_text, content, artifact_path)


def artifact(path: Path | str, artifact_dir: str | None = None) -> None:
    store.call(mlflow.log_artifact, str(path), artifact_dir)


def artifacts(folder: Path | str, artifact_dir: str | None = None, run_id: str | None = None) -> None:
    """Every file under `folder`, into `artifact_dir` of the active run or of run `run_id`."""
    if run_id is None:
        store.call(mlflow.log_artifacts, str(folder), artifact_dir)
    else:
        store.call(MlflowClient().log_artifacts, run_id, str(folder), artifact_dir)


def log_config(config: object) -> None:
    """The resolved config, as `config.<field>` params and as `config.json`."""
    params({CONFIG_PARAM_PREFIX + k: v for k, v in as_params(config).items()})
    store.call(mlflow.log_dict, dataclasses.asdict(config), CONFIG_ARTIFACT)


def log_dataset(dataset: ImageDataset, context: str) -> None:
    """Log the dataset as a run input, with its content digest."""
    source = HTTPDatasetSource(CIFAR10_URL) if dataset.source == "cifar10" else \
        LocalArtifactDatasetSource(str(Path(dataset.source).expanduser().resolve()))
    store.call(mlflow.log_input, MetaDataset(source=source, name=dataset.name, digest=dataset.digest[:16]),
               context=context)
    tags({TAG_DATASET: dataset.name, TAG_DATASET_DIGEST: dataset.digest})


def log_device(device: torch.device, precision: str) -> None:
    """The device and CPU thread count the run computes on; under bf16, whether the device has bf16
    matrix units (a warning on stderr when it has not)."""
    values = {TAG_DEVICE: str(device), TAG_THREADS: str(torch.get_num_threads())}
    native = check_bf16(device, precision)
    if native is not None:
        values[TAG_BF16_NATIVE] = str(native)
    tags(values)

