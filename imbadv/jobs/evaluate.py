"""The evaluate job: attack a registered target with a source model's gradient (section 3.2).

White-box: the source is the target itself. Black-box: the source is another model (the paper
uses the balanced model) trained on the same data. Clean accuracy is computed in PyTorch and,
from the target's ONNX file, in onnxruntime; the run fails if they disagree on too many images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from imbadv.config import (INFERENCE_BATCH, AttackConfig, ConfigError, EvaluateConfig, model_label,
                           resolve_evaluate_config)
from imbadv.core import metrics, plots
from imbadv.jobs import posthoc
from imbadv.core.attacks import run_attack
from imbadv.core.data import ImageDataset
from imbadv.core.gradient_pass import gradient_pass
from imbadv.core.export import OnnxMismatch, onnx_logits, onnx_session
from imbadv.core.inference import autocast, predict_logits, resolve_device, set_layout, to_unit
from imbadv.tracking import lifecycle, log, names
from imbadv.jobs.shared import SharedWork, current, gradient_key, load_data, load_model, onnx_check_key
from imbadv.tracking.registry import RegisteredModel, RegistryError


BATCH_SEEDS = 2**20  # attack seeds per --attack-seed: batch seeds never collide below a million test images


@dataclass(frozen=True)
class EvaluateOutcome:
    run_id: str
    clean_acc: float
    adv_acc: float
    per_class: list[dict[str, Any]]


@dataclass
class AttackResult:
    """Predictions of the target on the clean and adversarial attacked images (`labels` theirs), plus a
    few examples."""

    labels: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    clean_examples: np.ndarray
    adv_examples: np.ndarray
    example_index: np.ndarray


def run_name(config: EvaluateConfig) -> str:
    """`eval-<whitebox|blackbox|transfer>-<model>-<attack>-<direction>-eps<eps>`: what tells runs apart first,
    since the MLflow UI cuts names short."""
    kind = {"self": "whitebox", "balanced": "blackbox", "peer": f"blackbox-s{config.peer_seed}"}.get(config.source,
                                                                                                   "transfer")
    model = model_label(config.sampling, config.class_id, config.ratio, config.loss, config.resample)
    model += f"-posthoc{config.posthoc_tau:g}" if config.posthoc_tau else ""
    return f"eval-{kind}-{model}-{config.attack}-{config.direction}-eps{config.eps:g}"


def run_evaluate(shared: SharedWork | None = None, **options: Any) -> EvaluateOutcome:
    """Resolve the config from `options` and run the whole evaluate job.

    `shared` (default: this process's study memo, else nothing shared) gives the data, models,
    clean passes and adversarial sets that earlier evaluations in this process computed.
    """
    shared = current(shared)
    config = resolve_evaluate_config(**options)  # bad options stop here, before any run exists
    with lifecycle.job_run("evaluate", run_name(config)) as run, tempfile.TemporaryDirectory() as folder, \
            contextlib.ExitStack() as posthoc_lock:
        log.log_config(config)
        device = resolve_device(config.device)
        dataset = load_data(shared, config.data, config.cache_dir)
        log.log_dataset(dataset, "evaluation")
        target, source = _resolve_models(config, dataset, device, shared)
        adjusted = None
        if config.posthoc_tau:  # the adjusted model is the target, and its own white-box source
            adjusted = posthoc.adjusted_target(target, config.posthoc_tau, device, shared, Path(folder),
                                               config.cache_dir, posthoc_lock)
            target, source = adjusted.model, adjusted.model if source is target else source
        if config.target_label is not None and config.target_label >= dataset.num_classes:
            raise ConfigError(f"target label {config.target_label} is outside this dataset's "
                              f"{dataset.num_classes} classes: pass --target-label 0 to {dataset.num_classes - 1}")
        indices = attacked_indices(dataset.test_labels, dataset.num_classes, config.images_per_class,
                                   config.attacked_classes)
        log.tags({
            names.TAG_TARGET: f"{target.name}/{target.version}",
            names.TAG_SOURCE: "self" if source is target else f"{source.name}/{source.version}",
            names.TAG_ATTACK: f"{config.attack}-{config.direction}", names.TAG_EPS: str(config.eps),
            names.TAG_ATTACK_PARAMS: attack_params(config), names.TAG_WHITEBOX: str(source is target)})
        log.metrics({names.ATTACKED_IMAGES: len(indices)})
        log.log_device(device, config.precision)
        result = attack_test_set(target, source, dataset, config, device, shared, indices)
        onnx_pred = _onnx_cross_check(target, dataset, result.clean_pred, indices, config, device, shared)
        per_class = _log_metrics_and_artifacts(result, onnx_pred, dataset, config)
        if adjusted is not None and adjusted.files is not None:  # registered only once the evaluation succeeded
            target = posthoc.register(adjusted, run.info.run_id)
            log.tags({names.TAG_TARGET: f"{target.name}/{target.version}"})
        clean_acc = float((result.clean_pred == result.labels).mean())
        adv_acc = float((result.adv_pred == result.labels).mean())
        print(f"{target.name}/{target.version}: clean_acc {clean_acc:.4f} adv_acc {adv_acc:.4f} on {len(indices)} "
              f"images ({config.attack} {config.direction}, eps {config.eps:g}, source {config.source})")
        return EvaluateOutcome(run.info.run_id, clean_acc, adv_acc, per_class)


def _resolve_models(config: EvaluateConfig, dataset: ImageDataset, device: torch.device,
                    shared: SharedWork) -> tuple[RegisteredModel, RegisteredModel]:
    target = load_model(shared, config.target_uri or names.model_uri(config, dataset.name), device)
    _check_is(target, names.selection_name(config, dataset.name))
    if target.dataset_digest != dataset.digest:
        raise RegistryError(f"{target.uri} was trained on other data than {config.data}: evaluate it on the "
                            "dataset it was trained on")
    if config.source == "self":
        return target, target
    if config.source == "balanced":
        balanced = dataclasses.replace(config, sampling="balanced", class_id=None, ratio=None, loss="ce",
                                       resample="none")
        source_uri = config.source_uri or names.model_uri(balanced, dataset.name)
    elif config.source == "peer":  # the target's own selection, another seed
        peer = dataclasses.replace(config, seed=config.peer_seed, source="self", source_seed=None, source_uri=None)
        source_uri = config.source_uri or names.model_uri(peer, dataset.name)
    elif config.source.startswith("models:/"):
        source_uri = config.source
    else:
        raise ConfigError(f"unknown source {config.source!r}: use self, balanced, peer or a models:/ URI")
    source = load_model(shared, source_uri, device)
    if config.source == "balanced":
        _check_is(source, names.registered_model_name(dataset.name, "balanced", None))
    if config.source == "peer":
        _check_is(source, target.name)
        if source.version == target.version or source.tags.get(names.VERSION_SEED) == target.tags.get(
                names.VERSION_SEED):
            raise ConfigError(f"peer source {source.uri} is the target's own seed: pass a --source-seed other than "
                              f"{target.tags.get(names.VERSION_SEED)}")
    if source.dataset_digest != target.dataset_digest:
        raise RegistryError(f"source {source_uri} was trained on other data than target {target.uri}: "
                            "pick a source trained on the same dataset")
    return target, source


def _check_is(model: RegisteredModel, expected: str) -> None:
    """Refuse a pinned version of another model (registered name `expected`) than the one the options select."""
    if model.name != expected:
        raise ConfigError(f"{model.uri} is a version of {model.name}, not of {expected}: pass a version of "
                          f"{expected}, or options that select {model.name}")


def attacked_indices(labels: np.ndarray, num_classes: int, images_per_class: int = 0,
                     classes: tuple[int, ...] | None = None) -> np.ndarray:
    """The test images an evaluation attacks, in the dataset's order: those of `classes` (None: all),
    at most the first `images_per_class` of each (0: all)."""
    if classes is not None and (bad := [c for c in classes if c >= num_classes]):
        raise ConfigError(f"attack classes {bad} are outside this dataset's {num_classes} classes: pass ids from 0 "
                          f"to {num_classes - 1}")
    keep = np.ones(len(labels), bool) if classes is None else np.isin(labels, classes)
    if images_per_class:
        rank = np.zeros(len(labels), np.int64)  # each image's place among its class's images
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            rank[members] = np.arange(len(members))
        keep &= rank < images_per_class
    return np.flatnonzero(keep)


def attack_params(config: EvaluateConfig) -> str:
    """The attack's settings beyond eps and direction, as `key=value` words (tag `imbadv.attack_params`)."""
    settings: dict[str, object] = {}
    if config.attack in ("ifgsm", "mifgsm", "pgd"):
        settings |= {"steps": config.steps, "step_size": f"{config.iteration_step:g}"}
    if config.attack == "pgd":
        settings |= {"restarts": config.restarts, "attack_seed": config.attack_seed}
    if config.attack == "mifgsm":
        settings["decay"] = f"{config.decay:g}"
    if config.attack == "autoattack":
        settings |= {"version": config.aa_version, "attack_seed": config.attack_seed}
    if config.images_per_class:
        settings["images_per_class"] = config.images_per_class
    return " ".join(f"{k}={v}" for k, v in settings.items())


def attack_test_set(target: RegisteredModel, source: RegisteredModel, dataset: ImageDataset,
                    config: EvaluateConfig, device: torch.device, shared: SharedWork | None = None,
                    indices: np.ndarray | None = None) -> AttackResult:
    """Craft adversarial test images (those at `indices`, default all) with the source's gradient and
    classify them with the target.

    With `shared`, the target's clean logits and a black-box source's adversarial set come from
    earlier evaluations in this process when their settings match (the same numbers: a white-box
    FGSM's gradient pass and a plain forward give equal clean logits).
    """
    shared = current(shared)
    for model in (target, source):  # the same model twice when white-box: set_layout is idempotent
        set_layout(model.network, config.channels_last)
    indices = np.arange(len(dataset.test_labels)) if indices is None else indices
    subset_labels = dataset.test_labels[indices]
    images = torch.from_numpy(dataset.test_images[indices]).to(device)
    labels = torch.from_numpy(subset_labels).to(device)
    attack = config.attack_config()
    # the images attacked, named by the dataset and, for a part of its test set, the part
    images_digest = dataset.digest if len(indices) == len(dataset.test_labels) else \
        f"{dataset.digest}:{hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest()[:16]}"
    passes = (config.precision, config.channels_last, config.batch_size, str(device), images_digest)
    clean_key = (target.uri, *passes)
    clean_logits = shared.get("clean_logits", clean_key)
    adversarial_key = (source.uri, dataclasses.astuple(attack), *passes)
    if source is target:  # white-box: the target's own gradient
        adversarial, grad_logits = _craft(target, images, labels, attack, config, device, images_digest, shared)
        if target.tags.get(names.VERSION_SAMPLING) == "balanced":  # the very set a black-box attack crafts from it
            shared.put("adversarial", adversarial_key, adversarial)
        if clean_logits is None:
            clean_logits = shared.put("clean_logits", clean_key,
                                      grad_logits if grad_logits is not None else
                                      _batched_logits(target.network, images, config))
    else:  # black-box: one adversarial set per source and attack, scored on every target
        adversarial = shared.get_or_compute("adversarial", adversarial_key, lambda: _craft(
            source, images, labels, attack, config, device, images_digest, shared)[0])
        if clean_logits is None:
            clean_logits = shared.put("clean_logits", clean_key, _batched_logits(target.network, images, config))
    adv_logits = _batched_logits(target.network, adversarial, config, unit=True)
    grid = example_indices(subset_labels, config.grid_images)
    shown = torch.from_numpy(grid).to(device)
    return AttackResult(subset_labels, clean_logits.argmax(1).cpu().numpy(), adv_logits.argmax(1).cpu().numpy(),
                        to_unit(images[shown]).cpu().numpy(), adversarial[shown].detach().cpu().numpy(), grid)


def _batches(starts: range, desc: str) -> Any:
    return tqdm(starts, desc=desc, unit="batch", leave=False, disable=None)


def _craft(model: RegisteredModel, images: torch.Tensor, labels: torch.Tensor, attack: AttackConfig,
           config: EvaluateConfig, device: torch.device, dataset_digest: str,
           shared: SharedWork) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adversarial pixels for all uint8 `images` with `model`'s gradient, batch by batch; for FGSM also
    the clean logits of the gradient pass's forward (saves a forward). An FGSM gradient pass is kept
    in `shared` for the model's other eps and directions.
    """
    if config.attack == "fgsm":
        key = gradient_key(model.uri, attack, config.precision, config.channels_last, config.batch_size, device,
                           dataset_digest)
        found = shared.get_or_compute("gradient", key, lambda: gradient_pass(
            model.network, images, labels, attack, config.precision, config.batch_size,
            progress=lambda starts: _batches(starts, "attack")))
        return found.adversarial(images, attack), found.logits
    adversarial = []
    for start in _batches(range(0, len(images), config.batch_size), "attack"):
        x = to_unit(images[start:start + config.batch_size])
        y = labels[start:start + config.batch_size]
        # each batch its own random starts, fixed by the attack's seed and the batch's place
        batch_attack = dataclasses.replace(attack, attack_seed=attack.attack_seed * BATCH_SEEDS + start)
        adversarial.append(run_attack(model.network, x, y, batch_attack, config.precision).detach())
    return torch.cat(adversarial), None


def _batched_logits(network: torch.nn.Module, images: torch.Tensor, config: EvaluateConfig,
                    unit: bool = False) -> torch.Tensor:
    """Logits for uint8 `images` (or, with `unit`, float pixels in [0, 1]) in the attack's batches."""
    outputs = []
    for start in _batches(range(0, len(images), config.batch_size), "score"):
        batch = images[start:start + config.batch_size]
        outputs.append(_logits(network, batch if unit else to_unit(batch), config.precision))
    return torch.cat(outputs)


def example_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` test indices for the example grid: the first image of each class in turn."""
    firsts = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    picked = [idx[r] for r in range(max(map(len, firsts), default=0)) for idx in firsts if r < len(idx)]
    return np.sort(np.asarray(picked[:count], dtype=np.int64))


@torch.inference_mode()
def _logits(network: torch.nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    with autocast(images.device, precision):
        return network(images).float()


def _onnx_cross_check(target: RegisteredModel, dataset: ImageDataset, torch_pred: np.ndarray, indices: np.ndarray,
                      config: EvaluateConfig, device: torch.device, shared: SharedWork) -> np.ndarray:
    """Clean predictions from the target's ONNX file against PyTorch's on the attacked images, both fp32
    (the whole test set's in onnxruntime once per target and process). Returns ONNX's predictions of
    the attacked images.

    Under --precision bf16 the attack's own clean predictions are bf16, so PyTorch's fp32 ones are
    computed for the comparison.
    """
    if config.precision != "fp32":
        torch_pred = shared.get_or_compute("fp32_predictions", (target.uri, config.batch_size, str(device)), lambda: (
            predict_logits(target.network, torch.from_numpy(dataset.test_images).to(device),
                           config.batch_size).argmax(1).cpu().numpy()))[indices]

    def onnx_predictions() -> tuple[np.ndarray, str]:
        session = onnx_session(target.onnx_path, device)
        return onnx_logits(session, dataset.test_images, INFERENCE_BATCH).argmax(1), session.get_providers()[0]

    # keyed by the file's hash: the train job of this process may have checked the same file already
    key = onnx_check_key(target.tags[names.VERSION_ONNX_SHA256], INFERENCE_BATCH, device, dataset.digest)
    all_onnx_pred, provider = shared.get_or_compute("onnx_predictions", key, onnx_predictions)
    onnx_pred = all_onnx_pred[indices]
    disagreement = float((onnx_pred != torch_pred).mean())
    log.metrics({names.ONNX_CLEAN_ACC: float((onnx_pred == dataset.test_labels[indices]).mean()),
                 names.ONNX_AGREEMENT: 1.0 - disagreement})
    log.tags({names.TAG_ONNX_PROVIDER: provider})
    if disagreement > config.max_onnx_disagreement:
        raise OnnxMismatch(f"PyTorch and onnxruntime disagree on {disagreement:.2%} of test images (limit "
                           f"{config.max_onnx_disagreement:.2%}): {target.uri}'s ONNX file does not match its "
                           "weights; retrain it, or use --precision fp32")
    return onnx_pred


def _log_metrics_and_artifacts(result: AttackResult, onnx_pred: np.ndarray, dataset: ImageDataset,
                               config: EvaluateConfig) -> list[dict[str, Any]]:
    labels, class_names, k = result.labels, dataset.class_names, dataset.num_classes
    clean_cm = metrics.confusion_matrix(labels, result.clean_pred, k)
    adv_cm = metrics.confusion_matrix(labels, result.adv_pred, k)
    clean_acc, adv_acc = metrics.per_class_accuracy(clean_cm), metrics.per_class_accuracy(adv_cm)
    drop = metrics.relative_drop(clean_acc, adv_acc)
    onnx_acc = metrics.per_class_accuracy(metrics.confusion_matrix(labels, onnx_pred, k))
    success = metrics.attack_success_rate(labels, result.clean_pred, result.adv_pred, k)
    per_class = {names.CLEAN_ACC: clean_acc, names.ADV_ACC: adv_acc, names.REL_DROP: drop,
                 names.SUCCESS_RATE: success}
    values = {names.CLEAN_ACC: float((result.clean_pred == labels).mean()),
              names.ADV_ACC: float((result.adv_pred == labels).mean()),
              names.SUCCESS_RATE: float(metrics.attack_success_rate(labels, result.clean_pred, result.adv_pred, 1,
                                                                    by_class=False)[0])}
    values |= {names.per_class(metric, c): float(by_class[c]) for metric, by_class in per_class.items()
               for c in range(k)}
    log.metrics({key: v for key, v in values.items() if np.isfinite(v)})

    rows = [{"class_id": c, "class_name": class_names[c], "images": int(clean_cm[c].sum()),
             **{metric: float(by_class[c]) for metric, by_class in per_class.items()},
             names.ONNX_CLEAN_ACC: float(onnx_acc[c])} for c in range(k)]
    title = f"{config.attack} {config.direction}, eps={config.eps:g}, source={config.source}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        header = list(rows[0])
        lines = [",".join(header)] + [",".join(str(row[h]) for h in header) for row in rows]
        (folder / names.PER_CLASS_ARTIFACT).write_text("\n".join(lines) + "\n")
        for kind, cm in (("clean", clean_cm), ("adversarial", adv_cm)):
            metrics.write_confusion_csv(cm, class_names, folder / names.CONFUSION_DIR / f"{kind}.csv")
            plots.plot_confusion(cm, class_names, f"{kind.capitalize()} test set ({title})",
                                 folder / names.CONFUSION_DIR / f"{kind}.png")
        shown = result.example_index
        plots.plot_adversarial_grid(result.clean_examples, result.adv_examples, labels[shown],
                                    result.clean_pred[shown], result.adv_pred[shown], class_names, title,
                                    folder / names.GRID_ARTIFACT)
        log.artifacts(tmp)
    return rows
