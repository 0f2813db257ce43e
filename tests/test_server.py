"""Against a real `mlflow server` (PostgreSQL-backed in CI, artifacts proxied by the server):
train, register, evaluate, a smoke study that rides out a server restart, and the report.

The data are synthetic (no archive needed): these tests check the tracking, not accuracy.
"""

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

# MLflow's retries of one request: urllib3 sleeps FACTOR * 2**(n-1) s (at most 120 s) before retry n >= 2.
RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
SAFETY_S = 1800  # a safety net against a hang, not a pace


def _imbadv(server, cwd: Path, cache: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**_env(server, cache)}
    return subprocess.run([sys.executable, "-m", "imbadv", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _env(server, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                                                              "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI")}
    return {**env, "MLFLOW_TRACKING_URI": server.uri, "IMBADV_CACHE": str(cache)}


def test_train_register_evaluate_and_list_models_on_the_server(tracking_server, synthetic_data, session_cache,
                                                                tmp_path):
    common = ("--preset", "smoke", "--data", str(synthetic_data), "--device", "cpu")
    for model in (("--sampling", "balanced"), ("--sampling", "under", "--class-id", "3")):
        result = _imbadv(tracking_server, tmp_path, session_cache, "train", *common, *model, "--epochs", "1",
                         "--seed", "7")
        assert result.returncode == 0, result.stderr[-3000:]
    result = _imbadv(tracking_server, tmp_path, session_cache, "evaluate", *common, "--sampling", "under",
                     "--class-id", "3", "--seed", "7", "--source", "balanced")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clean_acc" in result.stdout

    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    name = names.registered_model_name(synthetic_data.name, "under", 3)
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


def _step_runs(client: MlflowClient) -> list:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if names.TAG_STEP_KEY in r.data.tags]


def _retry_budget_s(variables: dict[str, str]) -> float:
    """How long MLflow keeps retrying one request that meets a closed port (backoff sleeps, no jitter)."""
    factor = float(variables["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    retries = int(variables["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    return sum(min(120.0, factor * 2 ** (n - 1)) for n in range(2, retries + 1))


def test_a_study_rides_out_a_server_restart_then_reports(tracking_server, synthetic_data, session_cache, tmp_path):
    """The server stops and starts again while the study's first step writes to it: MLflow's request
    retries carry every write across, and the study finishes in its first attempt."""
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    command = [sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data", str(synthetic_data),
               "--classes", "5", "--device", "cpu", "--jobs", "1"]  # one worker: it has opened the store
    env = {**_env(tracking_server, session_cache), **RETRIES}
    output = tmp_path / "study.log"
    with output.open("w") as log:
        study = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + SAFETY_S
    while not (running := _step_runs(client)):  # the event: the first step's run exists
        assert study.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no step started in {SAFETY_S} s"
        time.sleep(0.2)
    (first,) = running

    stopped = time.monotonic()
    tracking_server.restart()
    downtime = time.monotonic() - stopped
    assert downtime < _retry_budget_s(RETRIES) / 4, f"the server was down {downtime:.0f} s"
    assert study.wait(timeout=SAFETY_S) == 0, output.read_text()[-3000:]
    assert client.get_run(first.info.run_id).info.status == "FINISHED"  # the step the restart cut across

    keys = _finished_step_keys(client)
    assert len(keys) == 8 and len(set(keys)) == 8  # 3 trainings and 5 evaluations, each once
    (study_run,) = client.search_runs([first.info.experiment_id], filter_string=f"tags.`{names.TAG_JOB}` = 'study'")
    assert study_run.info.status == "FINISHED"
    for model in ("balanced", "under-c5", "over-c5"):
        versions = client.search_model_versions(f"name = 'imbadv-{synthetic_data.name}-{model}'")
        assert len([v for v in versions if v.tags.get("alias") == "smoke-s0"]) == 1, model

    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "0 steps ran, 8 reused" in again.stdout + again.stderr

    report = _imbadv(tracking_server, tmp_path, session_cache, "report", "--preset", "smoke", "--data",
                     str(synthetic_data), timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    folder = tmp_path / "reports" / f"{synthetic_data.name}-smoke"
    assert (folder / "report.html").exists() and "Table 1" in report.stdout
