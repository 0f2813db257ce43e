"""Work shared between the jobs of one process: the memo, the ONNX graph reuse and exact results."""

from __future__ import annotations

import hashlib

import onnx
import pytest
import torch

from imbadv.core.export import export_onnx, export_with_weights, onnx_session
from imbadv.core.model import VGG, VGGSpec
from imbadv.jobs.shared import SharedWork, is_pinned


@pytest.fixture(scope="session")
def small_data(synthetic_data):
    """These tests check the plumbing, not accuracy: synthetic images, no CIFAR-10 archive needed."""
    return synthetic_data


def test_the_memo_computes_once_per_key_and_forgets_the_least_recently_used_beyond_its_limit():
    shared = SharedWork(limits={"adversarial": 2})
    calls = []

    def compute(value):
        return lambda: calls.append(value) or value

    assert shared.get_or_compute("adversarial", "a", compute("A")) == "A"
    assert shared.get_or_compute("adversarial", "a", compute("other")) == "A"
    shared.get_or_compute("adversarial", "b", compute("B"))
    shared.get("adversarial", "a")  # a is now the most recently used
    shared.get_or_compute("adversarial", "c", compute("C"))
    assert shared.get("adversarial", "b") is None and shared.get("adversarial", "a") == "A"
    assert calls == ["A", "B", "C"]
    assert shared.misses == {"adversarial": 3} and shared.hits["adversarial"] == 3


def test_only_a_version_number_pins_a_model():
    assert is_pinned("models:/imbadv-cifar10-balanced/3")
    assert not is_pinned("models:/imbadv-cifar10-balanced@smoke-s0")
    assert not is_pinned("models:/imbadv-cifar10-balanced")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_export_through_another_models_graph_is_the_same_file_as_a_fresh_export(tmp_path, one_thread):
    spec = VGGSpec(num_classes=10, width=4, dense_units=16)
    torch.manual_seed(0)
    first, second = VGG(spec).eval(), VGG(spec).eval()
    export_onnx(first, tmp_path / "first.onnx")
    export_onnx(second, tmp_path / "fresh.onnx")
    export_with_weights(onnx.load(str(tmp_path / "first.onnx")), second, tmp_path / "reused.onnx")
    assert _sha(tmp_path / "reused.onnx") == _sha(tmp_path / "fresh.onnx") != _sha(tmp_path / "first.onnx")

    other = VGG(VGGSpec(num_classes=10, width=8, dense_units=16)).eval()
    with pytest.raises(ValueError, match="has shape"):
        export_with_weights(onnx.load(str(tmp_path / "first.onnx")), other, tmp_path / "bad.onnx")


def test_the_onnx_session_of_a_cuda_device_names_its_provider_and_says_when_it_falls_back(tmp_path, capsys,
                                                                                           one_thread):
    path = export_onnx(VGG(VGGSpec(num_classes=10, width=4, dense_units=16)).eval(), tmp_path / "m.onnx")
    assert onnx_session(path, torch.device("cpu")).get_providers()[0] == "CPUExecutionProvider"
    capsys.readouterr()
    provider = onnx_session(path, torch.device("cuda")).get_providers()[0]
    said = capsys.readouterr().err
    if provider == "CPUExecutionProvider":  # no working CUDA provider on this machine
        assert "has no working CUDA provider here: the ONNX cross-check runs on the CPU" in said
    else:
        assert provider == "CUDAExecutionProvider" and "CPU" not in said


def _smoke(data, cache, **options) -> dict:
    return {"preset": "smoke", "data": str(data), "cache_dir": str(cache), "device": "cpu", **options}


@pytest.mark.slow
def test_evaluations_sharing_their_work_log_what_each_logs_alone(store, small_data, session_cache):
    from pathlib import Path

    import mlflow
    from mlflow.tracking import MlflowClient

    from imbadv.jobs.evaluate import run_evaluate
    from imbadv.jobs.train import run_train

    trained = SharedWork()
    balanced = run_train(shared=trained, **_smoke(small_data, session_cache))
    under = run_train(shared=trained, **_smoke(small_data, session_cache, sampling="under", class_id=3))
    assert trained.hits.get("onnx_graph") == 1 and trained.hits.get("dataset") == 1  # the second model's export
    balanced_uri = f"models:/{balanced.model_name}/{balanced.version}"
    under_uri = f"models:/{under.model_name}/{under.version}"
    evaluations = [{"target_uri": balanced_uri},
                   {"sampling": "under", "class_id": 3, "target_uri": under_uri},
                   {"sampling": "under", "class_id": 3, "target_uri": under_uri, "source": "balanced",
                    "source_uri": balanced_uri}]
    shared = SharedWork()
    together = [run_evaluate(shared=shared, **_smoke(small_data, session_cache, **e)) for e in evaluations]
    alone = [run_evaluate(shared=SharedWork(), **_smoke(small_data, session_cache, **e)) for e in evaluations]

    # The black-box set is the balanced model's white-box set; the target's clean pass and ONNX check
    # serve both of its evaluations.
    assert shared.misses.get("adversarial", 0) == 0 and shared.hits["adversarial"] == 1
    assert shared.hits["clean_logits"] == 1 and shared.hits["onnx_predictions"] == 1
    client = MlflowClient()

    def client_metrics(run_id: str) -> dict:
        return client.get_run(run_id).data.metrics

    def per_class(run_id: str) -> str:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="per_class.csv")).read_text()

    # an evaluation in the process that trained its target takes the training's ONNX check
    evaluate_where_trained = run_evaluate(shared=trained, **_smoke(small_data, session_cache, **evaluations[1]))
    assert trained.misses.get("onnx_predictions", 0) == 0
    assert client_metrics(evaluate_where_trained.run_id) == client_metrics(alone[1].run_id)
    for with_others, by_itself in zip(together, alone, strict=True):
        assert client.get_run(with_others.run_id).data.metrics == client.get_run(by_itself.run_id).data.metrics
        assert per_class(with_others.run_id) == per_class(by_itself.run_id)
    assert together[2].adv_acc < together[2].clean_acc or together[2].clean_acc == 0  # an attack happened
