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
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource

from imbadv.config import as_params
from imbadv.core.data import ImageDataset
from imbadv.tracking import store
from imbadv.tracking.names import CIFAR10_URL, CONFIG_ARTIFACT, CONFIG_PARAM_PREFIX, TAG_DATASET, TAG_DATASET_DIGEST


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


def log_json(values: Any, artifact_path: str) -> None:
    store.call(mlflow.log_text, json.dumps(values, indent=2, sort_keys=True), artifact_path)
