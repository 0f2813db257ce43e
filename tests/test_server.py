"""Against a real `mlflow server` (PostgreSQL-backed in CI, artifacts proxied by the server):
train, register, evaluate, a smoke study with the server restarted part-way, and the report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imbadv.tracking import names

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _imbadv(server, cwd: Path, cache: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**_env(server, cache)}
    return subprocess.run([sys.executable, "-m", "imbadv", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _env(server, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                                                              "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI")}
    return {**env, "MLFLOW_TRACKING_URI": server.uri, "IMBADV_CACHE": str(cache)}


def test_train_register_evaluate_and_list_models_on_the_server(tracking_server, small_data, session_cache, tmp_path):
    common = ("--preset", "smoke", "--data", str(small_data), "--device", "cpu")
    for model in (("--sampling", "balanced"), ("--sampling", "under", "--class-id", "3")):
        result = _imbadv(tracking_server, tmp_path, session_cache, "train", *common, *model, "--epochs", "1",
                         "--seed", "7")
        assert result.returncode == 0, result.stderr[-3000:]
    result = _imbadv(tracking_server, tmp_path, session_cache, "evaluate", *common, "--sampling", "under",
                     "--class-id", "3", "--seed", "7", "--source", "balanced")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clean_acc" in result.stdout

    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    name = names.registered_model_name(small_data.name, "under", 3)
    version = client.get_model_version_by_alias(name, "smoke-s7")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    # The server proxies artifacts into its own folder: the ONNX file is there, not in the client's.
    assert list(tracking_server.artifacts.rglob("model.onnx")) and not list(tmp_path.rglob("model.onnx"))
    evaluation = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{names.TAG_JOB}` = 'evaluate'")
    assert len(evaluation) == 1 and 0.0 <= evaluation[0].data.metrics["adv_acc"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(evaluation[0].info.run_id)}
    assert artifacts >= {names.CONFUSION_DIR, names.PER_CLASS_ARTIFACT}
    listed = _imbadv(tracking_server, tmp_path, session_cache, "models")
    assert listed.returncode == 0 and name in listed.stdout


def _finished_step_keys(client: MlflowClient) -> list[str]:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.status = 'FINISHED'")
    return [r.data.tags[names.TAG_STEP_KEY] for r in runs if names.TAG_STEP_KEY in r.data.tags]


def test_study_survives_a_server_restart_then_reports(tracking_server, small_data, session_cache, tmp_path):
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    command = [sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data", str(small_data),
               "--classes", "5", "--device", "cpu"]
    env = _env(tracking_server, session_cache)
    study = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 600
    while not _finished_step_keys(client) and study.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert study.poll() is None, study.communicate()[0][-3000:]
    tracking_server.stop()
    time.sleep(5)  # the study's requests meet a closed port meanwhile
    tracking_server.start()
    output = study.communicate(timeout=900)[0]
    print(f"study across the server restart: exit {study.returncode}")  # 0: MLflow's retries rode it out
    if study.returncode != 0:  # a clear message naming the rerun, then the rerun completes the rest
        assert "rerun the same command" in output, output[-3000:]
        rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                               check=False)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    keys = _finished_step_keys(client)
    assert len(keys) == 8 and len(set(keys)) == 8  # 3 trainings and 5 evaluations, each once
    for model in ("balanced", "under-c5", "over-c5"):
        versions = client.search_model_versions(f"name = 'imbadv-{small_data.name}-{model}'")
        assert len([v for v in versions if v.tags.get("alias") == "smoke-s0"]) == 1, model

    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "0 steps ran, 8 reused" in again.stdout + again.stderr

    report = _imbadv(tracking_server, tmp_path, session_cache, "report", "--preset", "smoke", "--data",
                     str(small_data), timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    folder = tmp_path / "reports" / f"{small_data.name}-smoke"
    assert (folder / "report.html").exists() and "Table 1" in report.stdout
