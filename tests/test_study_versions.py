"""A study attacks the exact model versions its own trainings made or reused, never a newer one by alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imbadv.config import ConfigError, resolve_evaluate_config
from imbadv.study.config import StudyConfig
from imbadv.study.plan import plan
from imbadv.study.reuse import pin_models
from imbadv.study.schedule import Model
from imbadv.tracking import names
from imbadv.tracking.results import Evaluation, MixedVersions, check_one_version_per_model
from imbadv.tracking.provenance import CODE_PARTS


def _evaluation(seed: int, target: str, source: str) -> Evaluation:
    return Evaluation("run", seed, 0.01, "under", 3, "self" if source == "self" else "balanced", {},
                      target_version=target, source_version=source)


def test_pinned_versions_are_part_of_an_evaluations_options_and_key():
    steps = [s for s in plan(StudyConfig(preset="smoke", classes="3"), 10, "digest", dict.fromkeys(CODE_PARTS, "code"))
             if s.entry == "evaluate"]
    blackbox = next(s for s in steps if dict(s.options)["source"] == "balanced")
    whitebox = next(s for s in steps if dict(s.options)["source"] == "self" and dict(s.options)["sampling"] == "under")
    versions = {Model(0, "balanced", None, None): "models:/m-balanced/1",
                Model(0, "under", 3, 5.0): "models:/m-under-c3/1"}
    pinned = pin_models(blackbox, versions, "digest", "code")
    assert dict(pinned.options)["target_uri"] == "models:/m-under-c3/1"
    assert dict(pinned.options)["source_uri"] == "models:/m-balanced/1"
    assert "source_uri" not in dict(pin_models(whitebox, versions, "digest", "code").options)
    retrained = pin_models(blackbox, {**versions, Model(0, "balanced", None, None): "models:/m-balanced/2"}, "digest",
                           "code")
    assert len({blackbox.key, pinned.key, retrained.key}) == 3  # a retrained source is attacked afresh
    assert pin_models(blackbox, versions, "digest", "code") == pinned  # and the same versions reuse


def test_evaluate_options_refuse_a_pin_that_is_not_a_registry_uri_or_not_a_balanced_source():
    with pytest.raises(ConfigError, match="is not a registry URI"):
        resolve_evaluate_config(target_uri="runs:/abc/model")
    with pytest.raises(ConfigError, match="use it with --source balanced"):
        resolve_evaluate_config(sampling="under", class_id=3, source_uri="models:/m/1")


def test_results_that_mix_versions_of_a_model_are_refused():
    consistent = [_evaluation(0, "m-under-c3/1", "self"), _evaluation(0, "m-under-c3/1", "m-balanced/2"),
                  _evaluation(0, "m-balanced/2", "self"), _evaluation(1, "m-balanced/5", "self")]
    check_one_version_per_model(consistent)  # seed 1 may use another version
    with pytest.raises(MixedVersions, match="seed 0 attack versions 2, 3 of m-balanced"):
        check_one_version_per_model([*consistent, _evaluation(0, "m-over-c3/1", "m-balanced/3")])


def _imbadv(store: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run([sys.executable, "-m", "imbadv", *args], env={**env, "MLFLOW_TRACKING_URI": store},
                            cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_study_reuses_an_outside_training_and_attacks_only_its_own_versions(store, small_data, session_cache,
                                                                              tmp_path):
    common = ["--preset", "smoke", "--data", str(small_data), "--cache-dir", str(session_cache), "--device", "cpu"]
    _imbadv(store, tmp_path, "train", *common)  # as `make demo` does: balanced v1, outside any study
    first = _imbadv(store, tmp_path, "reproduce", *common, "--classes", "3", "--jobs", "2")
    assert "7 steps ran, 1 reused" in first.stdout  # the balanced model is the demo's

    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    evaluations = client.search_runs(experiments, filter_string=f"tags.`{names.TAG_JOB}` = 'evaluate'")
    for run in evaluations:  # the study's evaluations are still to run ...
        client.delete_run(run.info.run_id)
    _imbadv(store, tmp_path, "train", *common)  # ... when someone trains the balanced model again: v2
    assert str(client.get_model_version_by_alias("imbadv-cifar10-small-balanced", "smoke-s0").version) == "2"

    second = _imbadv(store, tmp_path, "reproduce", *common, "--classes", "3", "--jobs", "2")
    assert "5 steps ran, 3 reused" in second.stdout
    evaluations = client.search_runs(experiments, filter_string=(
        f"tags.`{names.TAG_JOB}` = 'evaluate' and attributes.status = 'FINISHED'"))
    assert len(evaluations) == 5
    attacked = {run.data.tags[names.TAG_TARGET] for run in evaluations} | {
        run.data.tags[names.TAG_SOURCE] for run in evaluations} - {"self"}
    assert attacked == {"imbadv-cifar10-small-balanced/1", "imbadv-cifar10-small-under-c3/1",
                        "imbadv-cifar10-small-over-c3/1"}
    report = _imbadv(store, tmp_path, "report", "--preset", "smoke", "--data", str(small_data))
    assert "Table 1" in report.stdout
