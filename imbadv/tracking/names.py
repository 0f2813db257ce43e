"""MLflow names, defined once: the experiment, run tags, registry names and artifact paths."""

from __future__ import annotations

from imbadv.config import ModelSelection, model_label

EXPERIMENT = "imbadv"
CONFIG_PARAM_PREFIX = "config."
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# Tags on runs and model versions.
TAG_JOB = "imbadv.job"
TAG_ERROR = "imbadv.error"
TAG_GIT_COMMIT = "imbadv.git_commit"
TAG_CODE_VERSION = "imbadv.code_version"  # the whole package's source
TAG_TRAIN_CODE_VERSION = "imbadv.code_version.train"  # the code that decides a training's weights
TAG_EVALUATE_CODE_VERSION = "imbadv.code_version.evaluate"  # the code that decides an evaluation's numbers
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
TAG_ONNX_PROVIDER = "imbadv.onnx_provider"  # the onnxruntime execution provider of the cross-check
TAG_ENGINE = "imbadv.engine"  # the study engine that ran a step: shared or isolated
TAG_EXECUTOR = "imbadv.executor"  # where a study ran its steps: local worker processes or ray
TAG_RAY_NODE = "imbadv.ray_node"  # the Ray node id a step ran (or last resumed) on
TAG_RAY_TASK = "imbadv.ray_task"  # the Ray task of a step: a retry of it resumes the same run
TAG_GROUP_SIZE = "imbadv.group_size"  # a training's models trained side by side with it (itself included)
TAG_INIT_SHA256 = "imbadv.init_sha256"  # a training's initial weights: equal only for the same model again
TAG_THREADS = "imbadv.threads"  # torch's intra-op threads: bit-identical weights need the same count
TAG_DEVICE = "imbadv.device"  # the torch device the run computed on
TAG_BF16_NATIVE = "imbadv.bf16_native"  # under bf16: whether the device has bf16 matrix units

# Artifact paths.
MODEL_ARTIFACT = "model"
CONFIG_ARTIFACT = "config.json"
TRAIN_INDICES_ARTIFACT = "sampling/train_indices.csv"
VAL_INDICES_ARTIFACT = "sampling/val_indices.csv"
CHECKPOINT_ARTIFACT = "checkpoint/last.pt"
CONFUSION_DIR = "confusion"
PER_CLASS_ARTIFACT = "per_class.csv"
GRID_ARTIFACT = "examples/adversarial_grid.png"


def registered_model_name(dataset: str, sampling: str, class_id: int | None) -> str:
    """`imbadv-<dataset>-balanced`, `imbadv-<dataset>-under-c<k>` or `imbadv-<dataset>-over-c<k>`."""
    return f"imbadv-{dataset}-{model_label(sampling, class_id)}"


def model_alias(preset: str, seed: int) -> str:
    """Alias of the newest version trained with this preset and seed."""
    return f"{preset}-s{seed}"


def model_uri(selection: ModelSelection, dataset: str) -> str:
    """`models:/<name>@<preset>-s<seed>` of the model a selection names."""
    name = registered_model_name(dataset, selection.sampling, selection.class_id)
    return f"models:/{name}@{model_alias(selection.preset, selection.seed)}"
