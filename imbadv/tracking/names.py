"""MLflow names, defined once: the experiment, metrics, run and version tags, registry names and
artifact paths. Every module that reads or writes one of them takes it from here."""

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
TAG_ATTACK_PARAMS = "imbadv.attack_params"  # an attack's settings beyond eps: steps, step size, restarts, version
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
TAG_WHITEBOX = "imbadv.whitebox"  # an evaluation whose source is its target
TAG_STOPPED_EARLY = "imbadv.stopped_early"  # a training that early stopping ended
TAG_PYTHON = "imbadv.python"  # the Python version a run ran under
TAG_PACKAGE_VERSION_PREFIX = "imbadv.version."  # + a package name: its installed version

# Metrics. Per class: `per_class(metric, k)`.
TEST_ACC = "test_acc"  # a training's clean accuracy on the test set
BEST_EPOCH = "best_epoch"
EPOCHS_RUN = "epochs_run"
CLEAN_ACC = "clean_acc"  # an evaluation's clean accuracy on the images it attacks
ADV_ACC = "adv_acc"  # accuracy on the adversarial images
REL_DROP = "rel_drop"  # (clean - adversarial) / clean accuracy
ATTACKED_IMAGES = "attacked_images"  # the test images an evaluation attacked
SUCCESS_RATE = "success_rate"  # share of the correctly classified images that the attack turns wrong
ONNX_CLEAN_ACC = "onnx_clean_acc"  # clean accuracy in onnxruntime
ONNX_AGREEMENT = "onnx_agreement"  # share of images on which onnxruntime and PyTorch agree
ONNX_MAX_ABS_DIFF = "onnx_max_abs_diff"  # largest |logit difference| between onnxruntime and PyTorch
STEPS_TOTAL, STEPS_REUSED, STEPS_RAN, STEPS_FAILED = "steps_total", "steps_reused", "steps_ran", "steps_failed"

# Params of a training beyond its config: the model's input normalisation, per channel (R,G,B) on the 0-1 scale.
PARAM_NORMALIZE_MEAN = "normalize_mean"
PARAM_NORMALIZE_STD = "normalize_std"


def per_class(metric: str, k: int) -> str:
    """The metric's name for class `k`: `<metric>_c<k>`."""
    return f"{metric}_c{k}"


# Tags on registered model versions: what the version is and where it came from.
VERSION_SAMPLING = "sampling"
VERSION_CLASS_ID = "class_id"  # "" for the balanced model
VERSION_CLASS_NAME = "class_name"
VERSION_RATIO = "ratio"  # "" for balanced and natural
VERSION_LOSS = "loss"  # ce, or a remedy's loss
VERSION_RESAMPLE = "resample"
VERSION_TRAIN_COUNTS = "train_counts"  # images each class trains on, comma-separated in class-id order
VERSION_PRESET = "preset"
VERSION_SEED = "seed"
VERSION_DATASET = "dataset"
VERSION_DATASET_DIGEST = "dataset_digest"
VERSION_GIT_COMMIT = "git_commit"
VERSION_CODE_VERSION = "code_version"
VERSION_ONNX_SHA256 = "onnx_sha256"
VERSION_WEIGHTS_SHA256 = "weights_sha256"
VERSION_RUN_ID = "run_id"
VERSION_STEP_KEY = "step_key"  # set when a study step trained it
VERSION_ALIAS = "alias"  # the alias (<preset>-s<seed>) the version was registered for
VERSION_POSTHOC_TAU = "posthoc_tau"  # a post-hoc adjusted model's tau ("" or absent: not adjusted)
VERSION_POSTHOC_BASE = "posthoc_base"  # <name>/<version> of the model a post-hoc adjusted one adjusts

# Artifact paths.
MODEL_ARTIFACT = "model"
CONFIG_ARTIFACT = "config.json"
TRAIN_INDICES_ARTIFACT = "sampling/train_indices.csv"
VAL_INDICES_ARTIFACT = "sampling/val_indices.csv"
REMEDY_ARTIFACT = "sampling/remedy.json"  # a remedy's counts, priors and weights or logit offsets
CHECKPOINT_ARTIFACT = "checkpoint/last.pt"
CONFUSION_DIR = "confusion"
PER_CLASS_ARTIFACT = "per_class.csv"
GRID_ARTIFACT = "examples/adversarial_grid.png"


def registered_model_name(dataset: str, sampling: str, class_id: int | None, ratio: float | None = None,
                          loss: str = "ce", resample: str = "none") -> str:
    """`imbadv-<dataset>-<model label>`: `imbadv-cifar10-balanced`, `imbadv-cifar10-under-c3` (the paper's
    ratio), `imbadv-cifar10-under-c3-r20`, `imbadv-cifar10-longtail-r100`, `imbadv-cifar10-under-c3-cb`
    (`imbadv.config.model_label`)."""
    return f"imbadv-{dataset}-{model_label(sampling, class_id, ratio, loss, resample)}"


def selection_name(selection: ModelSelection, dataset: str) -> str:
    """The registered name of the model a selection (a train or evaluate config) names."""
    return registered_model_name(dataset, selection.sampling, selection.class_id, selection.ratio, selection.loss,
                                 selection.resample)


def posthoc_model_name(base_name: str, tau: float) -> str:
    """The registered name of `base_name` adjusted post hoc with `tau`: `imbadv-cifar10-under-c3-posthoc1`."""
    return f"{base_name}-posthoc{tau:g}"


def model_alias(preset: str, seed: int) -> str:
    """Alias of the newest version trained with this preset and seed."""
    return f"{preset}-s{seed}"


def model_uri(selection: ModelSelection, dataset: str) -> str:
    """`models:/<name>@<preset>-s<seed>` of the model a selection names."""
    name = selection_name(selection, dataset)
    return f"models:/{name}@{model_alias(selection.preset, selection.seed)}"
