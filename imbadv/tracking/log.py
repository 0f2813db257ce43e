"""What every run logs about its inputs: the resolved config and the dataset with its digest.

The config is logged as params `config.<field>` (so they never clash with the parameters that
`mlflow run` logs for an entry point) and as `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource

from imbadv.config import as_params
from imbadv.core.data import ImageDataset
from imbadv.core.inference import check_bf16
from imbadv.tracking import store
from imbadv.tracking.names import (CIFAR10_URL, CONFIG_ARTIFACT, CONFIG_PARAM_PREFIX, TAG_BF16_NATIVE, TAG_DATASET,
                                   TAG_DATASET_DIGEST, TAG_DEVICE, TAG_THREADS)


def log_config(config: object) -> None:
    """The resolved config, as `config.<field>` params and as `config.json`."""
    store.call(mlflow.log_params, {CONFIG_PARAM_PREFIX + k: v for k, v in as_params(config).items()})
    store.call(mlflow.log_dict, dataclasses.asdict(config), CONFIG_ARTIFACT)


def log_dataset(dataset: ImageDataset, context: str) -> None:
    """Log the dataset as a run input, with its content digest."""
    source = HTTPDatasetSource(CIFAR10_URL) if dataset.source == "cifar10" else \
        LocalArtifactDatasetSource(str(Path(dataset.source).expanduser().resolve()))
    store.call(mlflow.log_input, MetaDataset(source=source, name=dataset.name, digest=dataset.digest[:16]),
               context=context)
    store.call(mlflow.set_tags, {TAG_DATASET: dataset.name, TAG_DATASET_DIGEST: dataset.digest})


def log_device(device: torch.device, precision: str) -> None:
    """The device and CPU thread count the run computes on; under bf16, whether the device has bf16
    matrix units (a warning on stderr when it has not)."""
    tags = {TAG_DEVICE: str(device), TAG_THREADS: str(torch.get_num_threads())}
    native = check_bf16(device, precision)
    if native is not None:
        tags[TAG_BF16_NATIVE] = str(native)
    store.call(mlflow.set_tags, tags)


def log_json(values: Any, artifact_path: str) -> None:
    store.call(mlflow.log_text, json.dumps(values, indent=2, sort_keys=True), artifact_path)
