"""Registered models: log pickle-free, register with tags and alias, resolve and load back.

A registered version is an MLflow pyfunc (ONNX inference) whose artifacts hold everything imbadv
needs: `weights` (safetensors), `spec` (architecture, class names, dataset digest) and `onnx`.
Their SHA-256 sums are version tags, checked whenever the version is loaded. Each version also has
a signature (the prediction columns), an input example and a description: what the model is and
three lines that call it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imbadv.tracking import names, pyfunc_model, store  # pyfunc_model: the columns (its set_model() is inert here)
from imbadv.core.data import sha256_file
from imbadv.core.model import VGG, VGGSpec
from imbadv.core.posthoc import LogitAdjusted

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model_spec.json"
ONNX_FILE = "model.onnx"
POSTHOC_SPEC_KEY = "posthoc"  # in a post-hoc adjusted model's spec: tau, log priors and the base version
PIP_REQUIREMENTS = ["mlflow>=3", "numpy", "onnxruntime", "pandas"]
# One mid-grey image, uint8 and channels last: the format image files decode to.
INPUT_EXAMPLE = np.full((1, 32, 32, 3), 128, dtype=np.uint8)


class RegistryError(LookupError):
    """A model, alias or artifact that is missing or does not match; the message says what to do."""


@dataclass(frozen=True)
class RegisteredModel:
    """A model version loaded from the registry, with its network and ONNX file."""

    uri: str
    name: str
    version: str
    tags: dict[str, str]
    spec: dict[str, Any]
    network: torch.nn.Module  # a VGG, or a post-hoc adjusted VGG
    onnx_path: Path

    @property
    def dataset_digest(self) -> str:
        return self.spec["dataset_digest"]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.spec["class_names"])


def write_model_files(network: torch.nn.Module, spec: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Weights (safetensors) and spec (JSON) beside an exported ONNX file; returns artifact paths."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True))
    return {"weights": folder / WEIGHTS_FILE, "spec": folder / SPEC_FILE, "onnx": folder / ONNX_FILE}


def log_and_register(files: dict[str, Path], name: str, alias: str, tags: dict[str, str]) -> ModelVersion:
    """Log the model in the active run, register a version of `name` with a description of what it is
    and how to call it, and point `alias` at it.

    A resumed run whose earlier process registered these very files (same weights and ONNX SHA-256)
    and was killed before the run ended completes that version instead of registering a second one.
    """
    class_names = json.loads(files["spec"].read_text())["class_names"]
    client = MlflowClient()
    run_id = mlflow.active_run().info.run_id
    tags = {**tags, names.VERSION_ALIAS: alias}
    version = registered_by_run(client, run_id, name, tags)
    if version is None:
        info = store.call(mlflow.pyfunc.log_model, name=names.MODEL_ARTIFACT, python_model=str(PYFUNC_CODE),
                          artifacts={k: str(v) for k, v in files.items()}, pip_requirements=PIP_REQUIREMENTS,
                          signature=model_signature(class_names), input_example=INPUT_EXAMPLE)
        version = store.call(mlflow.register_model, info.model_uri, name, tags=tags)
    else:
        print(f"run {run_id} registered {name} version {version.version} before it was interrupted: "
              "completing that version")
        for key, value in tags.items():
            if version.tags.get(key) != value:
                store.call(client.set_model_version_tag, name, str(version.version), key, value)
    test_acc = store.call(client.get_run, run_id).data.metrics.get(names.TEST_ACC)
    description = version_description(f"models:/{name}/{version.version}", tags, test_acc, class_names)
    version = store.call(client.update_model_version, name, str(version.version), description=description)
    point_alias_at_newest(name, alias)
    return version


def registered_by_run(client: MlflowClient, run_id: str, name: str, tags: dict[str, str]) -> ModelVersion | None:
    """The version of `name` that run `run_id` registered for the same files and alias (`tags`), if any."""
    same = (names.VERSION_WEIGHTS_SHA256, names.VERSION_ONNX_SHA256, names.VERSION_ALIAS)
    versions = [v for v in store.call(client.search_model_versions, f"run_id = '{run_id}'")
                if v.name == name and all(v.tags.get(key) == tags[key] for key in same)]
    return max(versions, key=lambda v: int(v.version), default=None)


def model_signature(class_names: list[str]) -> ModelSignature:
    """The pyfunc's signature: its output columns, and no input schema.

    MLflow checks inputs against an input schema before `predict` sees them, and a tensor schema has
    one dtype and one shape: uint8 images, channels-last images or both would be refused, with the
    whole array in the message. `predict` checks its input itself (one-line errors); the input example
    and the version's description show what it takes.
    """
    outputs = [ColSpec("string", pyfunc_model.CLASS_COLUMN), ColSpec("long", pyfunc_model.INDEX_COLUMN),
               *(ColSpec("double", column) for column in pyfunc_model.probability_columns(class_names))]
    return ModelSignature(inputs=None, outputs=Schema(outputs))


def usage_snippet(uri: str) -> str:
    """Three lines that load a registered model and print its predictions for eight uint8 images."""
    return ("import mlflow, numpy as np\n"
            f'model = mlflow.pyfunc.load_model("{uri}")\n'
            "print(model.predict(np.random.randint(0, 256, (8, 32, 32, 3), np.uint8)).head())\n")


def version_description(uri: str, tags: dict[str, str], test_acc: float | None, class_names: list[str]) -> str:
    """Markdown for a version: what it is (dataset, sampling, class, preset, seed, clean test accuracy)
    and how to call it."""
    sampling, class_id = tags[names.VERSION_SAMPLING], tags[names.VERSION_CLASS_ID]
    if class_id:
        sampling += f" (class {class_id}, {tags[names.VERSION_CLASS_NAME]}, {sampling}-sampled)"
    accuracy = "not recorded" if test_acc is None else f"{test_acc:.4f}"
    columns = pyfunc_model.probability_columns(class_names)
    adjusted = (f"Post-hoc logit-adjusted (tau {tags[names.VERSION_POSTHOC_TAU]}, Menon et al. 2021) version of "
                f"{tags[names.VERSION_POSTHOC_BASE]}: its logits minus tau * log(training prior). "
                if tags.get(names.VERSION_POSTHOC_TAU) else "")
    return (f"{adjusted}imbadv VGG classifier. Dataset {tags[names.VERSION_DATASET]}, sampling {sampling}, "
            f"preset {tags[names.VERSION_PRESET]}, seed {tags[names.VERSION_SEED]}; clean test accuracy {accuracy} "
            f"(run {tags[names.VERSION_RUN_ID]}).\n\n"
            "Input: images as uint8 (0-255) or float ([0, 1]) pixels, shape (N, 3, 32, 32) or (N, 32, 32, 3). "
            f"Output: a DataFrame, one row per image in input order: {pyfunc_model.CLASS_COLUMN}, "
            f"{pyfunc_model.INDEX_COLUMN} and each class's probability ({', '.join(columns)}).\n\n"
            f"```python\n{usage_snippet(uri)}```\n")


def point_alias_at_newest(name: str, alias: str) -> int:
    """Point `alias` at the newest version registered for it, and return that version.

    Processes registering the same name at once may each set the alias; each one checks after
    setting it and sets it again while a newer version exists, so the alias ends on the newest.
    """
    client = MlflowClient()
    newest = _newest_version(client, name, alias)
    while True:
        store.call(client.set_registered_model_alias, name, alias, str(newest))
        latest = _newest_version(client, name, alias)
        if latest == newest:
            return newest
        newest = latest


def _newest_version(client: MlflowClient, name: str, alias: str) -> int:
    versions = store.call(client.search_model_versions, f"name = '{name}'")
    return max(int(v.version) for v in versions if v.tags.get(names.VERSION_ALIAS) == alias)


def find_posthoc(base: RegisteredModel, tau: float) -> str | None:
    """`models:/<name>/<version>` of the newest registered post-hoc adjustment of `base` with `tau`, if any."""
    name = names.posthoc_model_name(base.name, tau)
    versions = [v for v in store.call(MlflowClient().search_model_versions, f"name = '{name}'")
                if v.tags.get(names.VERSION_POSTHOC_BASE) == f"{base.name}/{base.version}"
                and v.tags.get(names.VERSION_POSTHOC_TAU) == f"{tau:g}"]
    newest = max(versions, key=lambda v: int(v.version), default=None)
    return None if newest is None else f"models:/{name}/{newest.version}"


def resolve_version(uri: str) -> ModelVersion:
    """The version a `models:/<name>@<alias>` or `models:/<name>/<version>` URI names."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri!r} is not a registry URI: use models:/<name>@<alias> or models:/<name>/<version>")
    ref = uri[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = ref.partition("/")
        if not version:
            raise RegistryError(f"{uri!r} names no version: use models:/{name}@<alias> or models:/{name}/<version>")
        return client.get_model_version(name, version)
    except MlflowException as error:
        raise RegistryError(f"{uri} is not in the registry: train it first (imbadv train ...) or list "
                            "what is there with `imbadv models`") from error


def load_registered(uri: str, device: torch.device) -> RegisteredModel:
    """Load a registered version's network (safetensors weights) and ONNX file, checking their hashes."""
    version = resolve_version(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}"))
    artifacts = local / "artifacts"
    weights, spec_path, onnx_path = artifacts / WEIGHTS_FILE, artifacts / SPEC_FILE, artifacts / ONNX_FILE
    for path, tag in ((weights, names.VERSION_WEIGHTS_SHA256), (onnx_path, names.VERSION_ONNX_SHA256)):
        expected = version.tags.get(tag)
        if not path.exists() or expected is None or sha256_file(path) != expected:
            raise RegistryError(f"{uri}: {path.name} does not match the SHA-256 recorded at training "
                                "time: the artifact is damaged; retrain the model")
    spec = json.loads(spec_path.read_text())
    network: torch.nn.Module = VGG(VGGSpec.from_dict(spec["architecture"]))
    if adjustment := spec.get(POSTHOC_SPEC_KEY):  # a post-hoc adjusted model: the offset is one of its buffers
        network = LogitAdjusted(network, torch.tensor(adjustment["log_prior"]), adjustment["tau"])
    try:  # safetensors holds tensors only: nothing in the file is ever executed
        state = load_file(str(weights))
    except SafetensorError as error:
        raise RegistryError(f"{uri}: {weights.name} is not a safetensors file ({error}): imbadv loads weights "
                            "from safetensors only; retrain the model") from error
    network.load_state_dict(state)
    network.to(device).eval()
    return RegisteredModel(uri=uri, name=version.name, version=str(version.version), tags=dict(version.tags),
                           spec=spec, network=network, onnx_path=onnx_path)


def list_registered(prefix: str = "imbadv-") -> list[dict[str, Any]]:
    """Every registered imbadv model with its versions, aliases and key metrics."""
    client = MlflowClient()
    models = client.search_registered_models(filter_string=f"name LIKE '{prefix}%'", max_results=1000)
    return [describe(model.name) for model in sorted(models, key=lambda m: m.name)]


def describe(name: str) -> dict[str, Any]:
    """A registered model's versions, newest first, with aliases, tags and the run's test accuracy."""
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        raise RegistryError(f"model {name} is not in the registry: list what is there with `imbadv models`") from error
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases_by_version.setdefault(str(version), []).append(alias)
    versions = []
    for version in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)):
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        number = str(version.version)
        versions.append({"version": number, "aliases": sorted(aliases_by_version.get(number, [])),
                         "test_acc": metrics.get(names.TEST_ACC), "onnx_agreement": metrics.get(names.ONNX_AGREEMENT),
                         "run_id": version.run_id, "tags": dict(version.tags)})
    return {"name": name, "versions": versions}
