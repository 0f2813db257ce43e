"""The train job: sample an imbalanced set, train, score on the test set, export, register.

Everything lands in one MLflow run; the model is registered only after the ONNX export agrees
with PyTorch on all but MAX_ONNX_DISAGREEMENT (0.1%) of the test images.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import torch
from mlflow.tracking import MlflowClient

from imbadv.config import MAX_ONNX_DISAGREEMENT, TrainConfig, model_label, resolve_train_config
from imbadv.core import metrics, plots
from imbadv.core.data import DataError, ImageDataset, sha256_file
from imbadv.core.group import TrainingGroup
from imbadv.core.export import OnnxMismatch, compare_with_torch, export_onnx, export_with_weights, onnx_session
from imbadv.core.inference import predict_logits, resolve_device
from imbadv.core.model import VGG, input_statistics, weights_sha256
from imbadv.core.remedies import remedy_values
from imbadv.core.sampling import Split, sample_split
from imbadv.core.trainer import initial_network, train
from imbadv.jobs.shared import SharedWork, current, load_data, onnx_check_key
from imbadv.tracking import lifecycle, liveness, log, names, provenance, registry, store
from imbadv.tracking.provenance import train_key

@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_name: str
    version: str
    alias: str
    test_acc: float


def run_name(config: TrainConfig) -> str:
    """`train-<model>-<preset>-s<seed>`, e.g. `train-over-c3-paper-s0`."""
    model = model_label(config.sampling, config.class_id, config.ratio, config.loss, config.resample)
    return f"train-{model}-{config.preset}-s{config.seed}"


def run_train(resume: str | None = None, shared: SharedWork | None = None, group: TrainingGroup | None = None,
              **options: Any) -> TrainOutcome:
    """Resolve the config from `options` (None = the preset's value) and run the whole train job.

    A run of the same config and code that was killed (RUNNING or KILLED) is resumed from its last
    checkpoint, as is the run `resume` names; under `mlflow run` the project's run is used.
    `shared` (default: this process's study memo, else nothing shared) gives the decoded data and
    the ONNX graph of an earlier model of the same architecture, and keeps the ONNX check for the
    model's evaluations. With `group` (a study's shared engine runs each member in its own thread)
    the epochs run vectorised with the group's other models.
    """
    shared = current(shared)
    config = resolve_train_config(**options)  # bad options stop here, before any run exists
    dataset = load_data(shared, config.data, config.cache_dir)
    # so do bad data and counts the data cannot give
    split = sample_split(dataset.train_labels, config, dataset.num_classes, dataset.train_groups)
    store.prepare()  # answers, and has its schema, before the search for a killed run
    resume_id = resume or (None if os.environ.get("MLFLOW_RUN_ID") else resumable_run(config))
    with lifecycle.job_run("train", run_name(config), run_id=resume_id,
                           tags={names.TAG_TRAIN_KEY: train_key(config)}) as run:
        log.log_config(config)
        device = resolve_device(config.device)
        log.log_device(device, config.precision)
        recorded = run.data.tags.get(names.TAG_DATASET_DIGEST)
        if recorded and recorded != dataset.digest:
            raise DataError(f"the data at {config.data} changed since run {run.info.run_id} started: train "
                            "afresh in a new run (do not pass --resume)")
        log.log_dataset(dataset, "training")
        checkpoint = _load_checkpoint(run.info.run_id) if resume_id else None
        if group is not None:
            log.tags({names.TAG_GROUP_SIZE: str(group.size)})
        network = _train_network(config, dataset, split, device, checkpoint, group)
        test_logits = predict_logits(network, torch.from_numpy(dataset.test_images).to(device),
                                     config.eval_batch_size)
        _log_test_metrics(test_logits.argmax(1).cpu().numpy(), dataset)
        return _export_and_register(config, dataset, split, network, test_logits, run.info.run_id, device, shared)


def resumable_run(config: TrainConfig) -> str | None:
    """The newest run of the same training whose process died (left RUNNING, or KILLED), if any."""
    key = train_key(config)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=20,
                              filter_string=f"tags.`{names.TAG_TRAIN_KEY}` = '{key}' and "
                                            "attributes.status != 'FINISHED' and attributes.status != 'FAILED'",
                              order_by=["attributes.start_time DESC"])
    orphans = [run for run in runs if liveness.process_is_gone(run)]  # never take over a live run
    return orphans[0].info.run_id if orphans else None


def _load_checkpoint(run_id: str) -> dict | None:
    """The last end-of-epoch checkpoint of a run (tensors and numbers only), or None."""
    client = MlflowClient()
    folder = names.CHECKPOINT_ARTIFACT.rsplit("/", 1)[0]
    if not any(a.path == names.CHECKPOINT_ARTIFACT for a in client.list_artifacts(run_id, folder)):
        return None
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.CHECKPOINT_ARTIFACT)
    print(f"resuming run {run_id} from its checkpoint")
    return torch.load(path, weights_only=True)


def _save_checkpoint(state: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(names.CHECKPOINT_ARTIFACT).name
        torch.save(state, path)
        log.artifact(path, names.CHECKPOINT_ARTIFACT.rsplit("/", 1)[0])


_EXPORT_LOCK = threading.Lock()


def _train_network(config: TrainConfig, dataset: ImageDataset, split: Split, device: torch.device,
                   checkpoint: dict | None, group: TrainingGroup | None = None) -> VGG:
    log.text("\n".join(map(str, split.train.tolist())), names.TRAIN_INDICES_ARTIFACT)
    log.text("\n".join(map(str, split.val.tolist())), names.VAL_INDICES_ARTIFACT)
    mean, std = input_statistics(dataset.class_names, dataset.train_mean, dataset.train_std)
    whole = "" if dataset.train_groups is None else " in whole groups"
    log.params({"train_images": len(split.train), "val_images": len(split.val),
                "val_split": (f"stratified {config.val_fraction:g} of each class's sampled images{whole}"
                              if config.val_fraction else "none"),
                "train_counts": train_counts(dataset.train_labels, split, dataset.num_classes),
                "init_seed": config.init_seed,
                names.PARAM_NORMALIZE_MEAN: ",".join(map(repr, mean)),
                names.PARAM_NORMALIZE_STD: ",".join(map(repr, std))})
    if config.loss != "ce" or config.resample != "none":
        counts = torch.bincount(torch.from_numpy(dataset.train_labels[split.train]), minlength=dataset.num_classes)
        log.text(json.dumps(remedy_values(config, counts), indent=1), names.REMEDY_ARTIFACT)

    network = initial_network(config, dataset.num_classes, mean, std).to(device)
    log.tags({names.TAG_INIT_SHA256: weights_sha256(network)})

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device)

    result = train(network, as_tensor(dataset.train_images[split.train]), as_tensor(dataset.train_labels[split.train]),
                   as_tensor(dataset.train_images[split.val]), as_tensor(dataset.train_labels[split.val]), config,
                   on_epoch=lambda m: log.metrics(m.as_dict(), step=m.epoch),
                   on_checkpoint=_save_checkpoint, resume_from=checkpoint, group=group)
    log.metrics({names.BEST_EPOCH: result.best_epoch, names.EPOCHS_RUN: len(result.history)})
    log.tags({names.TAG_STOPPED_EARLY: str(result.stopped_early)})
    return network


def _log_test_metrics(predictions: np.ndarray, dataset: ImageDataset) -> None:
    confusion = metrics.confusion_matrix(dataset.test_labels, predictions, dataset.num_classes)
    per_class = metrics.per_class_accuracy(confusion)
    log.metrics({names.TEST_ACC: float((predictions == dataset.test_labels).mean()),
                 **{names.per_class(names.TEST_ACC, k): float(acc) for k, acc in enumerate(per_class)}})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        metrics.write_confusion_csv(confusion, dataset.class_names, folder / "test.csv")
        plots.plot_confusion(confusion, dataset.class_names, "Clean test set", folder / "test.png")
        log.artifacts(tmp, names.CONFUSION_DIR)


def _export(network: VGG, path: Path, shared: SharedWork) -> None:
    """Export to ONNX, reusing the graph of an earlier export of the same architecture in this process."""
    key = json.dumps(network.spec.to_dict(), sort_keys=True)
    with _EXPORT_LOCK:  # the exporter traces through torch's global state: one thread at a time
        _export_once(network, path, shared, key)


def _export_once(network: VGG, path: Path, shared: SharedWork, key: str) -> None:
    template = shared.get("onnx_graph", key)
    if template is not None:
        try:
            export_with_weights(template, network, path)
            return
        except ValueError as error:
            print(f"exporting afresh: {error}")
    export_onnx(network, path)
    shared.put("onnx_graph", key, onnx.load(str(path)))


def train_counts(labels: np.ndarray, split: Split, num_classes: int) -> str:
    """Images each class trains on (validation images held out), comma-separated in class-id order."""
    return ",".join(map(str, np.bincount(labels[split.train], minlength=num_classes).tolist()))


def _export_and_register(config: TrainConfig, dataset: ImageDataset, split: Split, network: VGG,
                         test_logits: torch.Tensor, run_id: str, device: torch.device,
                         shared: SharedWork) -> TrainOutcome:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = {"architecture": network.spec.to_dict(), "class_names": list(dataset.class_names),
                "dataset": dataset.name, "dataset_digest": dataset.digest}
        files = registry.write_model_files(network, spec, folder)
        _export(network, files["onnx"], shared)
        session = onnx_session(files["onnx"], device)
        check = compare_with_torch(network, session, torch.from_numpy(dataset.test_images), config.eval_batch_size,
                                   test_logits)
        log.metrics({names.ONNX_AGREEMENT: check.agreement, names.ONNX_MAX_ABS_DIFF: check.max_abs_diff})
        log.tags({names.TAG_ONNX_PROVIDER: session.get_providers()[0]})
        shared.put("onnx_predictions", onnx_check_key(sha256_file(files["onnx"]), config.eval_batch_size, device,
                                                      dataset.digest),
                   (check.onnx_logits.argmax(1), session.get_providers()[0]))  # for this model's evaluations
        if 1.0 - check.agreement > MAX_ONNX_DISAGREEMENT:
            raise OnnxMismatch(f"onnxruntime agrees with PyTorch on {check.agreement:.4%} of test images, below "
                               f"{1.0 - MAX_ONNX_DISAGREEMENT:.1%}: the export is wrong; the model was not registered")
        name = names.selection_name(config, dataset.name)
        alias = names.model_alias(config.preset, config.seed)
        tags = {names.VERSION_SAMPLING: config.sampling,
                names.VERSION_CLASS_ID: "" if config.class_id is None else str(config.class_id),
                names.VERSION_CLASS_NAME: "" if config.class_id is None else dataset.class_names[config.class_id],
                names.VERSION_RATIO: "" if config.ratio is None else f"{config.ratio:g}",
                names.VERSION_LOSS: config.loss, names.VERSION_RESAMPLE: config.resample,
                names.VERSION_TRAIN_COUNTS: train_counts(dataset.train_labels, split, dataset.num_classes),
                names.VERSION_PRESET: config.preset, names.VERSION_SEED: str(config.seed),
                names.VERSION_DATASET: dataset.name, names.VERSION_DATASET_DIGEST: dataset.digest,
                names.VERSION_GIT_COMMIT: provenance.git_commit(),
                names.VERSION_CODE_VERSION: provenance.code_version(),
                names.VERSION_ONNX_SHA256: sha256_file(files["onnx"]),
                names.VERSION_WEIGHTS_SHA256: sha256_file(files["weights"]), names.VERSION_RUN_ID: run_id}
        if step_key := lifecycle.current_step_key():
            tags[names.VERSION_STEP_KEY] = step_key
        version = registry.log_and_register(files, name, alias, tags)
    test_acc = float((test_logits.argmax(1).cpu().numpy() == dataset.test_labels).mean())
    print(f"registered {name} version {version.version} (alias {alias}); test_acc {test_acc:.4f}")
    return TrainOutcome(run_id, name, str(version.version), alias, test_acc)
