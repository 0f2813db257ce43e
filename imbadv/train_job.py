"""The train job: sample an imbalanced set, train, score on the test set, export, register.

Everything lands in one MLflow run; the model is registered only after the ONNX export agrees
with PyTorch on at least 99.9% of the test images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from imbadv import metrics, registry, store, tracking
from imbadv.config import ConfigError, TrainConfig, resolve_train_config
from imbadv.data import DataError, ImageDataset, load_dataset, sha256_file
from imbadv.export import compare_with_torch, export_onnx, onnx_session
from imbadv.inference import predict_logits, resolve_device
from imbadv.model import VGG, VGGSpec
from imbadv.sampling import sample_split
from imbadv.trainer import seed_everything, train

MIN_ONNX_AGREEMENT = 0.999


class OnnxMismatch(RuntimeError):
    """onnxruntime and PyTorch disagree on too many images."""


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_name: str
    version: str
    alias: str
    test_acc: float


def run_name(options: dict[str, Any]) -> str:
    sampling = options.get("sampling") or "balanced"
    class_part = "" if options.get("class_id") is None else f"-c{options['class_id']}"
    return f"train-{sampling}{class_part}-{options.get('preset') or 'paper'}-s{options.get('seed') or 0}"


def run_train(resume: str | None = None, **options: Any) -> TrainOutcome:
    """Resolve the config from `options` (None = the preset's value) and run the whole train job.

    A run of the same config and code that was killed (RUNNING or KILLED) is resumed from its last
    checkpoint, as is the run `resume` names; under `mlflow run` the project's run is used.
    """
    store.prepare()  # answers, and has its schema, before the search for a killed run
    resume_id = resume or (None if os.environ.get("MLFLOW_RUN_ID") else resumable_run(options))
    with tracking.job_run("train", run_name(options), run_id=resume_id) as run:
        config = resolve_train_config(**options)
        tracking.log_config(config)
        mlflow.set_tag(tracking.TAG_TRAIN_KEY, train_key(config))
        device = resolve_device(config.device)
        mlflow.set_tag("imbadv.device", str(device))
        dataset = load_dataset(config.data, config.cache_dir)
        recorded = run.data.tags.get(tracking.TAG_DATASET_DIGEST)
        if recorded and recorded != dataset.digest:
            raise DataError(f"the data at {config.data} changed since run {run.info.run_id} started: train "
                            "afresh in a new run (do not pass --resume)")
        tracking.log_dataset(dataset, "training")
        checkpoint = _load_checkpoint(run.info.run_id) if resume_id else None
        network = _train_network(config, dataset, device, checkpoint)
        test_logits = predict_logits(network, torch.from_numpy(dataset.test_images).to(device),
                                     config.eval_batch_size)
        _log_test_metrics(test_logits.argmax(1).cpu().numpy(), dataset)
        return _export_and_register(config, dataset, network, test_logits, run.info.run_id, device)


def train_key(config: TrainConfig) -> str:
    """Identity of a training: every config value but where it runs, and the code version."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("cache_dir", "device")}
    payload = json.dumps({"config": values, "code": tracking.code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def resumable_run(options: dict[str, Any]) -> str | None:
    """The newest run of the same training whose process died (left RUNNING, or KILLED), if any."""
    try:
        key = train_key(resolve_train_config(**options))
    except ConfigError:
        return None  # the run about to start records the error
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=20,
                              filter_string=f"tags.`{tracking.TAG_TRAIN_KEY}` = '{key}' and "
                                            "attributes.status != 'FINISHED' and attributes.status != 'FAILED'",
                              order_by=["attributes.start_time DESC"])
    orphans = [run for run in runs if tracking.process_is_gone(run)]  # never take over a live run
    return orphans[0].info.run_id if orphans else None


def _load_checkpoint(run_id: str) -> dict | None:
    """The last end-of-epoch checkpoint of a run (tensors and numbers only), or None."""
    client = MlflowClient()
    folder = tracking.CHECKPOINT_ARTIFACT.rsplit("/", 1)[0]
    if not any(a.path == tracking.CHECKPOINT_ARTIFACT for a in client.list_artifacts(run_id, folder)):
        return None
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=tracking.CHECKPOINT_ARTIFACT)
    print(f"resuming run {run_id} from its checkpoint")
    return torch.load(path, weights_only=True)


def _save_checkpoint(state: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(tracking.CHECKPOINT_ARTIFACT).name
        torch.save(state, path)
        mlflow.log_artifact(str(path), tracking.CHECKPOINT_ARTIFACT.rsplit("/", 1)[0])


def _train_network(config: TrainConfig, dataset: ImageDataset, device: torch.device,
                   checkpoint: dict | None) -> VGG:
    split = sample_split(dataset.train_labels, config, dataset.num_classes)
    mlflow.log_text("\n".join(map(str, split.train.tolist())), tracking.TRAIN_INDICES_ARTIFACT)
    mlflow.log_text("\n".join(map(str, split.val.tolist())), tracking.VAL_INDICES_ARTIFACT)
    counts = np.bincount(dataset.train_labels[split.train], minlength=dataset.num_classes)
    mlflow.log_params({"train_images": len(split.train), "val_images": len(split.val),
                       "val_split": f"stratified {config.val_fraction:g} of each class's sampled images",
                       "train_counts": ",".join(map(str, counts.tolist()))})

    seed_everything(config.seed)
    network = VGG(VGGSpec(num_classes=dataset.num_classes, width=config.width, dense_units=config.dense_units,
                          dropout=config.dropout, batch_norm=config.batch_norm)).to(device)

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device)

    result = train(network, as_tensor(dataset.train_images[split.train]), as_tensor(dataset.train_labels[split.train]),
                   as_tensor(dataset.train_images[split.val]), as_tensor(dataset.train_labels[split.val]), config,
                   on_epoch=lambda m: mlflow.log_metrics(m.as_dict(), step=m.epoch),
                   on_checkpoint=_save_checkpoint, resume_from=checkpoint)
    mlflow.log_metrics({"best_epoch": result.best_epoch, "epochs_run": len(result.history)})
    mlflow.set_tag("imbadv.stopped_early", str(result.stopped_early))
    return network


def _log_test_metrics(predictions: np.ndarray, dataset: ImageDataset) -> None:
    confusion = metrics.confusion_matrix(dataset.test_labels, predictions, dataset.num_classes)
    per_class = metrics.per_class_accuracy(confusion)
    mlflow.log_metrics({"test_acc": float((predictions == dataset.test_labels).mean()),
                        **{f"test_acc_c{k}": float(acc) for k, acc in enumerate(per_class)}})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        metrics.write_confusion_csv(confusion, dataset.class_names, folder / "test.csv")
        metrics.plot_confusion(confusion, dataset.class_names, "Clean test set", folder / "test.png")
        mlflow.log_artifacts(tmp, tracking.CONFUSION_DIR)


def _export_and_register(config: TrainConfig, dataset: ImageDataset, network: VGG, test_logits: torch.Tensor,
                         run_id: str, device: torch.device) -> TrainOutcome:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = {"architecture": network.spec.to_dict(), "class_names": list(dataset.class_names),
                "dataset": dataset.name, "dataset_digest": dataset.digest}
        files = registry.write_model_files(network, spec, folder)
        export_onnx(network, files["onnx"])
        check = compare_with_torch(network, onnx_session(files["onnx"], device),
                                   torch.from_numpy(dataset.test_images), config.eval_batch_size, test_logits)
        mlflow.log_metrics({"onnx_agreement": check.agreement, "onnx_max_abs_diff": check.max_abs_diff})
        if check.agreement < MIN_ONNX_AGREEMENT:
            raise OnnxMismatch(f"onnxruntime agrees with PyTorch on {check.agreement:.4%} of test images, below "
                               f"{MIN_ONNX_AGREEMENT:.1%}: the export is wrong; the model was not registered")
        name = tracking.registered_model_name(dataset.name, config.sampling, config.class_id)
        alias = tracking.model_alias(config.preset, config.seed)
        tags = {"sampling": config.sampling, "class_id": "" if config.class_id is None else str(config.class_id),
                "class_name": "" if config.class_id is None else dataset.class_names[config.class_id],
                "preset": config.preset, "seed": str(config.seed), "dataset": dataset.name,
                "dataset_digest": dataset.digest, "git_commit": tracking.git_commit(),
                "code_version": tracking.code_version(),
                "onnx_sha256": sha256_file(files["onnx"]), "weights_sha256": sha256_file(files["weights"]),
                "run_id": run_id}
        if step_key := tracking.current_step_key():
            tags["step_key"] = step_key
        version = registry.log_and_register(files, name, alias, tags)
    test_acc = float((test_logits.argmax(1).cpu().numpy() == dataset.test_labels).mean())
    print(f"registered {name} version {version.version} (alias {alias}); test_acc {test_acc:.4f}")
    return TrainOutcome(run_id, name, str(version.version), alias, test_acc)
