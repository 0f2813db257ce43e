"""Post-hoc logit adjustment (`--posthoc-tau`): the offset, and the adjusted model that is attacked,
exported, cross-checked and registered."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from imbadv.config import ConfigError, EvaluateConfig
from imbadv.core.posthoc import LogitAdjusted, log_priors
from imbadv.jobs import evaluate
from imbadv.jobs.evaluate import run_evaluate
from imbadv.jobs.train import run_train
from imbadv.tracking import names
from imbadv.tracking.registry import load_registered


def test_adjusted_logits_are_the_network_logits_minus_tau_log_prior():
    torch.manual_seed(0)
    network = torch.nn.Linear(4, 3)
    counts = [500, 100, 20]
    adjusted = LogitAdjusted(network, log_priors(counts), tau=1.5)
    x = torch.randn(8, 4)
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    expected = network(x).double() - 1.5 * torch.log(prior)
    assert torch.allclose(adjusted(x).double(), expected, atol=1e-5)
    # equal logits: the adjustment predicts the rarest class
    assert LogitAdjusted(torch.nn.Identity(), log_priors(counts), 1.0)(torch.zeros(1, 3)).argmax() == 2


def test_log_priors_refuse_a_class_missing_from_the_training_set():
    with pytest.raises(ValueError, match="every class"):
        log_priors([10, 0, 5])


@pytest.mark.parametrize("tau", [-1.0, math.inf, math.nan])
def test_a_bad_tau_is_refused_in_one_line(tau):
    with pytest.raises(ConfigError, match=r"posthoc tau .* finite number >= 0"):
        EvaluateConfig(sampling="under", class_id=3, posthoc_tau=tau)


def _smoke(data, cache, **options) -> dict:
    return {"preset": "smoke", "data": str(data), "cache_dir": str(cache), "device": "cpu", **options}


@pytest.mark.slow
def test_the_adjusted_model_is_attacked_registered_once_and_predicts_adjusted(store, synthetic_data,
                                                                               session_cache):
    run_train(**_smoke(synthetic_data, session_cache))
    trained = run_train(**_smoke(synthetic_data, session_cache, sampling="under", class_id=5, ratio=10))
    client = MlflowClient()
    base_name = "imbadv-cifar10-small-under-c5-r10"
    name = f"{base_name}-posthoc1"

    plain = run_evaluate(**_smoke(synthetic_data, session_cache, sampling="under", class_id=5, ratio=10, eps=0.05))
    white = run_evaluate(**_smoke(synthetic_data, session_cache, sampling="under", class_id=5, ratio=10, eps=0.05,
                                  posthoc_tau=1.0))
    run = client.get_run(white.run_id)
    assert run.info.run_name == "eval-whitebox-under-c5-r10-posthoc1-fgsm-ascent-eps0.05"
    assert run.data.tags[names.TAG_TARGET] == f"{name}/1" and run.data.tags[names.TAG_SOURCE] == "self"
    assert run.data.metrics[names.ONNX_AGREEMENT] >= 0.999
    assert run.data.metrics[names.ONNX_CLEAN_ACC] == pytest.approx(white.clean_acc)
    assert white.clean_acc != plain.clean_acc or white.adv_acc != plain.adv_acc

    version = client.get_model_version(name, "1")
    assert version.tags[names.VERSION_POSTHOC_TAU] == "1"
    assert version.tags[names.VERSION_POSTHOC_BASE] == f"{base_name}/{trained.version}"
    assert version.tags[names.VERSION_TRAIN_COUNTS] == \
        client.get_model_version(base_name, trained.version).tags[names.VERSION_TRAIN_COUNTS]
    assert str(client.get_model_version_by_alias(name, "smoke-s0").version) == "1"

    # the registered weights, ONNX file and pyfunc all give the adjusted predictions
    adjusted = load_registered(f"models:/{name}/1", torch.device("cpu"))
    base = load_registered(f"models:/{base_name}/{trained.version}", torch.device("cpu"))
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        counts = [int(n) for n in version.tags[names.VERSION_TRAIN_COUNTS].split(",")]
        expected = base.network(x) - log_priors(counts)
        assert torch.allclose(adjusted.network(x), expected, atol=1e-5)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/1")
    predicted = pyfunc.predict(images)["class_index"].to_numpy()
    assert (predicted == expected.argmax(1).numpy()).mean() >= 0.99

    # later evaluations attack the registered version: no second one
    black = run_evaluate(**_smoke(synthetic_data, session_cache, sampling="under", class_id=5, ratio=10, eps=0.05,
                                  posthoc_tau=1.0, source="balanced"))
    black_run = client.get_run(black.run_id)
    assert black_run.data.tags[names.TAG_TARGET] == f"{name}/1"
    assert black_run.data.tags[names.TAG_SOURCE] == "imbadv-cifar10-small-balanced/1"
    assert black.clean_acc == pytest.approx(white.clean_acc)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


@pytest.mark.slow
def test_a_failed_adjusted_evaluation_registers_nothing(store, synthetic_data, session_cache, monkeypatch):
    run_train(**_smoke(synthetic_data, session_cache, sampling="under", class_id=2))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluate, "_log_metrics_and_artifacts", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_evaluate(**_smoke(synthetic_data, session_cache, sampling="under", class_id=2, posthoc_tau=2.0))
    client = MlflowClient()
    (run,) = client.search_runs(client.get_experiment_by_name(names.EXPERIMENT).experiment_id,
                                "attributes.run_name LIKE 'eval-%'")
    assert run.info.status == "FAILED"
    assert client.search_model_versions("name = 'imbadv-cifar10-small-under-c2-posthoc2'") == []
