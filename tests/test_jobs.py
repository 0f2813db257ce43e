"""The train and evaluate jobs end to end on real CIFAR-10 images, against a temporary SQLite store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from imbadv.tracking import names
from imbadv.config import ConfigError, TrainConfig
from imbadv.core.data import load_dataset, sha256_file
from imbadv.core.inference import bf16_is_native
from imbadv.jobs.evaluate import run_evaluate
from imbadv.core.sampling import sample_split
from imbadv.jobs.train import run_train


@pytest.fixture(scope="session")
def small_data(synthetic_data):
    """These tests check the plumbing, not accuracy: synthetic images, no CIFAR-10 archive needed."""
    return synthetic_data


@pytest.fixture(scope="session")
def extracted(synthetic_data):
    """A tree to slice other images of the same name from (test_source_trained_on_other_data_is_refused)."""
    return synthetic_data


def smoke(data: Path, cache: Path, **options) -> dict:
    return {"preset": "smoke", "data": str(data), "cache_dir": str(cache), "device": "cpu", **options}


def artifact_text(run_id: str, path: str) -> str:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text()


@pytest.mark.slow
def test_train_logs_registers_and_exports(store, small_data, session_cache):
    outcome = run_train(**smoke(small_data, session_cache, sampling="under", class_id=3))
    client = MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"

    # Registry: name, alias, version tags.
    assert outcome.model_name == "imbadv-cifar10-small-under-c3"
    version = client.get_model_version_by_alias(outcome.model_name, "smoke-s0")
    assert str(version.version) == outcome.version == "1"
    tags = version.tags
    assert (tags["sampling"], tags["class_id"], tags["class_name"], tags["preset"], tags["seed"]) == \
        ("under", "3", "cat", "smoke", "0")
    dataset = load_dataset(str(small_data), session_cache)
    assert tags["dataset_digest"] == dataset.digest == run.data.tags[names.TAG_DATASET_DIGEST]
    assert tags["git_commit"] and tags["run_id"] == outcome.run_id

    # The ONNX file is reachable from the registry version alone and matches its recorded hash.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{outcome.model_name}/{outcome.version}"))
    assert sha256_file(local / "artifacts" / "model.onnx") == tags["onnx_sha256"]
    assert sha256_file(local / "artifacts" / "model.safetensors") == tags["weights_sha256"]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{outcome.model_name}@smoke-s0")
    predicted = pyfunc.predict(dataset.test_images[:5].astype(np.float32) / 255)
    assert len(predicted) == 5 and list(predicted["class_name"]) == [
        dataset.class_names[k] for k in predicted["class_index"]]

    # Per-epoch metrics with step=epoch, test metrics, ONNX agreement.
    history = client.get_metric_history(outcome.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]
    for name in ("train_acc", "val_loss", "val_acc", "lr"):
        assert len(client.get_metric_history(outcome.run_id, name)) == 2
    metrics = run.data.metrics
    assert metrics["test_acc"] == pytest.approx(outcome.test_acc)
    per_class = [metrics[f"test_acc_c{k}"] for k in range(10)]
    assert np.mean(per_class) == pytest.approx(metrics["test_acc"])  # 30 test images in every class
    assert metrics["onnx_agreement"] >= 0.999 and metrics["onnx_max_abs_diff"] < 1e-3

    # Resolved config as params, dataset as an input.
    params = run.data.params
    assert params["config.width"] == "8" and params["config.sampling"] == "under"
    assert params["config.lr"] == "0.001" and params["config.decay"] == "1e-05"
    assert run.inputs.dataset_inputs[0].dataset.name == "cifar10-small"

    # Confusion matrix: rows = true class, counts over the whole test split.
    rows = list(csv.reader(artifact_text(outcome.run_id, "confusion/test.csv").splitlines()))
    assert rows[0][1:] == list(dataset.class_names)
    counts = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert counts.sum(axis=1).tolist() == [30] * 10

    # The logged indices rebuild the training set exactly.
    logged = [int(i) for i in artifact_text(outcome.run_id, names.TRAIN_INDICES_ARTIFACT).split()]
    config = TrainConfig(**smoke(small_data, session_cache, sampling="under", class_id=3, majority_count=100,
                                 batch_size=8))
    assert logged == sample_split(dataset.train_labels, config, 10).train.tolist()
    assert np.bincount(dataset.train_labels[logged]).tolist() == [90] * 3 + [18] + [90] * 6


@pytest.mark.slow
def test_retraining_is_bit_identical_and_alias_follows_newest(store, small_data, session_cache):
    first = run_train(**smoke(small_data, session_cache))
    second = run_train(**smoke(small_data, session_cache))
    other_seed = run_train(**smoke(small_data, session_cache, seed=1))
    client = MlflowClient()
    weights = {o.version: client.get_model_version(o.model_name, o.version).tags["weights_sha256"]
               for o in (first, second, other_seed)}
    assert weights["1"] == weights["2"]  # same seed, same data, CPU: identical weights
    assert weights["3"] != weights["1"]
    assert str(client.get_model_version_by_alias(first.model_name, "smoke-s0").version) == "2"
    assert str(client.get_model_version_by_alias(first.model_name, "smoke-s1").version) == "3"


@pytest.mark.slow
def test_evaluate_whitebox_and_blackbox(store, small_data, session_cache):
    run_train(**smoke(small_data, session_cache))
    run_train(**smoke(small_data, session_cache, sampling="under", class_id=5))
    client = MlflowClient()

    white = run_evaluate(**smoke(small_data, session_cache, sampling="under", class_id=5, eps=0.05))
    run = client.get_run(white.run_id)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert m["adv_acc"] < m["clean_acc"]  # ascent at eps 0.05 on the model's own gradient
    assert m["onnx_clean_acc"] == pytest.approx(m["clean_acc"])
    assert m["onnx_agreement"] >= 0.999
    for k in range(10):
        assert {f"clean_acc_c{k}", f"adv_acc_c{k}"} <= set(m)
        if m[f"clean_acc_c{k}"] > 0:
            clean, adversarial = m[f"clean_acc_c{k}"], m[f"adv_acc_c{k}"]
            assert m[f"rel_drop_c{k}"] == pytest.approx((clean - adversarial) / clean)
    assert run.data.tags[names.TAG_TARGET] == "imbadv-cifar10-small-under-c5/1"
    assert run.data.tags[names.TAG_SOURCE] == "self"
    assert run.data.tags[names.TAG_ATTACK] == "fgsm-ascent" and run.data.tags[names.TAG_EPS] == "0.05"
    artifacts = {a.path for a in client.list_artifacts(white.run_id)} | \
        {a.path for a in client.list_artifacts(white.run_id, "confusion")}
    assert {"per_class.csv", "confusion/clean.csv", "confusion/adversarial.csv", "confusion/clean.png",
            "confusion/adversarial.png"} <= artifacts
    assert client.list_artifacts(white.run_id, "examples")[0].path == names.GRID_ARTIFACT
    rows = list(csv.DictReader(artifact_text(white.run_id, "per_class.csv").splitlines()))
    assert [float(r["adv_acc"]) for r in rows] == pytest.approx([m[f"adv_acc_c{k}"] for k in range(10)])

    black = run_evaluate(**smoke(small_data, session_cache, sampling="under", class_id=5, eps=0.05,
                                 source="balanced"))
    black_run = client.get_run(black.run_id)
    assert black_run.data.tags[names.TAG_SOURCE] == "imbadv-cifar10-small-balanced/1"
    assert black.clean_acc == pytest.approx(white.clean_acc)  # same target, same clean images
    assert black.adv_acc != white.adv_acc

    iterative = run_evaluate(**smoke(small_data, session_cache, sampling="under", class_id=5, eps=0.05,
                                     attack="ifgsm", steps=3, direction="descent", target_label=2))
    assert client.get_run(iterative.run_id).data.tags[names.TAG_ATTACK] == "ifgsm-descent"

    # bf16 attacks and channels_last: the ONNX cross-check still compares fp32 with fp32.
    fast = run_evaluate(**smoke(small_data, session_cache, sampling="under", class_id=5, eps=0.05,
                                precision="bf16", channels_last=True))
    fast_run = client.get_run(fast.run_id)
    assert fast_run.data.metrics["onnx_agreement"] >= 0.999
    assert fast_run.data.params["config.precision"] == "bf16" and fast_run.data.params["config.channels_last"] == "True"
    assert fast_run.data.tags[names.TAG_BF16_NATIVE] == str(bf16_is_native(torch.device("cpu")))
    assert names.TAG_BF16_NATIVE not in client.get_run(white.run_id).data.tags  # fp32 runs carry no such tag


@pytest.mark.slow
def test_strong_attacks_on_the_images_a_cell_needs(store, small_data, session_cache):
    run_train(**smoke(small_data, session_cache))
    run_train(**smoke(small_data, session_cache, sampling="over", class_id=3))
    client = MlflowClient()
    cell = smoke(small_data, session_cache, sampling="over", class_id=3, eps=0.05, attack_classes="3",
                 images_per_class=6)
    fgsm = run_evaluate(**{**cell, "attack": "fgsm"})
    pgd = run_evaluate(**{**cell, "attack": "pgd", "steps": 5, "step_size": 0.0125, "attack_seed": 7})
    run = client.get_run(pgd.run_id)
    m = run.data.metrics
    assert m[names.ATTACKED_IMAGES] == 6  # the first 6 cat images, nothing else
    assert {k for k in m if k.startswith("adv_acc_c")} == {"adv_acc_c3"}
    assert client.get_run(fgsm.run_id).data.metrics[names.ATTACKED_IMAGES] == 6
    assert m["onnx_clean_acc"] == pytest.approx(m["clean_acc"])  # the ONNX check on the same images
    assert run.data.tags[names.TAG_ATTACK] == "pgd-ascent"
    assert run.data.tags[names.TAG_ATTACK_PARAMS] == \
        "steps=5 step_size=0.0125 restarts=1 attack_seed=7 images_per_class=6"
    again = run_evaluate(**{**cell, "attack": "pgd", "steps": 5, "step_size": 0.0125, "attack_seed": 7})
    assert again.per_class[3] == pgd.per_class[3]  # the seed fixes the random start

    auto = run_evaluate(**{**cell, "attack": "autoattack", "aa_version": "fast"})
    assert client.get_run(auto.run_id).data.tags[names.TAG_ATTACK_PARAMS] == \
        "version=fast attack_seed=0 images_per_class=6"
    with pytest.raises(ConfigError, match="autoattack is an ascent attack"):
        run_evaluate(**{**cell, "attack": "autoattack", "direction": "descent"})
    black = run_evaluate(**{**cell, "attack": "mifgsm", "steps": 3, "source": "balanced"})
    assert client.get_run(black.run_id).data.tags[names.TAG_SOURCE] == "imbadv-cifar10-small-balanced/1"


@pytest.mark.slow
def test_source_trained_on_other_data_is_refused(store, small_data, extracted, tmp_path, session_cache):
    from conftest import make_slice

    from imbadv.tracking.registry import RegistryError

    other = make_slice(extracted, tmp_path / "other" / "cifar10-small", 110, 30)  # same name, other images
    run_train(**smoke(small_data, session_cache))
    other_model = run_train(**smoke(other, session_cache, seed=7))
    with pytest.raises(RegistryError, match="trained on other data"):
        source = f"models:/{other_model.model_name}/{other_model.version}"
        run_evaluate(**smoke(small_data, session_cache, source=source))
    failed = MlflowClient().search_runs(["1"], filter_string="attributes.status = 'FAILED'")
    assert len(failed) == 1 and "trained on other data" in failed[0].data.tags[names.TAG_ERROR]


@pytest.mark.slow
def test_damaged_registered_artifact_is_refused(store, small_data, session_cache, tmp_path):
    from imbadv.tracking.registry import RegistryError

    run_train(**smoke(small_data, session_cache))
    (onnx_file,) = [p for p in tmp_path.rglob("model.onnx") if "models" in p.parts]
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match=r"model\.onnx does not match the SHA-256 recorded at training time"):
        run_evaluate(**smoke(small_data, session_cache))


class _Payload:
    """A pickle that creates a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_malicious_pickle_in_place_of_the_weights_is_refused_unexecuted(store, small_data, session_cache, tmp_path):
    import pickle

    from imbadv.tracking.registry import RegistryError

    outcome = run_train(**smoke(small_data, session_cache))
    marker = tmp_path / "payload-ran"
    (weights,) = [p for p in tmp_path.rglob("model.safetensors") if "models" in p.parts]
    weights.write_bytes(pickle.dumps(_Payload(marker)))
    # An attacker who can also rewrite the recorded hash gets past the hash check, not past safetensors.
    MlflowClient().set_model_version_tag(outcome.model_name, outcome.version, "weights_sha256", sha256_file(weights))
    with pytest.raises(RegistryError, match="is not a safetensors file"):
        run_evaluate(**smoke(small_data, session_cache))
    assert not marker.exists()


@pytest.mark.slow
def test_nan_loss_stops_training_with_a_failed_run_and_nothing_registered(store, small_data, session_cache):
    from imbadv.core.trainer import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="training loss became nan in epoch 1: lower --lr"):
        run_train(**smoke(small_data, session_cache, lr=1e12))
    client = MlflowClient()
    (run,) = client.search_runs(["1"])
    assert run.info.status == "FAILED" and "training loss became nan" in run.data.tags[names.TAG_ERROR]
    assert client.search_registered_models() == []


@pytest.mark.slow
def test_a_profile_and_a_remedy_register_under_their_own_names_and_are_attacked_by_them(store, small_data,
                                                                                        session_cache):
    balanced = run_train(**smoke(small_data, session_cache))
    remedy = run_train(**smoke(small_data, session_cache, sampling="under", class_id=3, ratio=10, loss="cb"))
    assert remedy.model_name == "imbadv-cifar10-small-under-c3-r10-cb"
    tags = MlflowClient().get_model_version(remedy.model_name, remedy.version).tags
    assert (tags["ratio"], tags["loss"], tags["resample"]) == ("10", "cb", "none")
    assert tags["train_counts"] == ",".join(["90"] * 3 + ["9"] + ["90"] * 6)  # 100 and 10, a tenth held out
    logged = json.loads(artifact_text(remedy.run_id, names.REMEDY_ARTIFACT))
    assert logged["train_counts"][3] == 9 and len(logged["class_weights"]) == 10
    assert logged["class_weights"][3] > logged["class_weights"][0]
    outcome = run_evaluate(**smoke(small_data, session_cache, sampling="under", class_id=3, ratio=10, loss="cb",
                                   source="balanced"))
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.tags[names.TAG_TARGET] == f"{remedy.model_name}/{remedy.version}"
    assert run.data.tags[names.TAG_SOURCE] == f"{balanced.model_name}/{balanced.version}"  # the ce balanced model
    with pytest.raises(ConfigError, match="takes no ratio"):
        run_train(**smoke(small_data, session_cache, ratio=10))
