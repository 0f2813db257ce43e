"""`mlflow run . --env-manager local` of both entry points, on the shared CIFAR-10 copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def mlflow_run(entry: str, params: dict[str, str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "imbadv",
            "-e", entry]  # as the README says
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_mlflow_run_train_then_evaluate_log_into_the_project_run(store, shared_archive, session_cache, tmp_path):
    # `mlflow run --env-manager local` runs `python ...` from PATH: this interpreter's environment
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": store, "IMBADV_CACHE": str(session_cache)}
    train = mlflow_run("train", {"sampling": "over", "class_id": "3", "preset": "smoke",
                                 "data": str(shared_archive)}, env, tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    client = MlflowClient()
    imbadv = client.get_experiment_by_name("imbadv").experiment_id  # beside the CLI's runs
    runs = client.search_runs([imbadv])
    assert len(runs) == 1  # the job logged into the run that `mlflow run` created
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "train-over-c3-smoke-s0"  # named as the CLI does
    assert run.data.params["sampling"] == "over" and run.data.params["config.sampling"] == "over"
    assert run.data.params["config.epochs"] == "2"  # empty MLproject parameter -> the preset's value
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert {"test_acc", "onnx_agreement", "test_acc_c3"} <= set(run.data.metrics)
    version = client.get_model_version_by_alias("imbadv-cifar10-jpeg-over-c3", "smoke-s0")
    assert version.run_id == run.info.run_id

    evaluate = mlflow_run("evaluate", {"sampling": "over", "class_id": "3", "preset": "smoke",
                                       "data": str(shared_archive), "eps": "0.02"}, env, tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    runs = client.search_runs([imbadv], filter_string="tags.`mlflow.project.entryPoint` = 'evaluate'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_name == "eval-whitebox-over-c3-fgsm-ascent-eps0.02"
    metrics = runs[0].data.metrics
    assert metrics["onnx_clean_acc"] == pytest.approx(metrics["clean_acc"])
    assert metrics["clean_acc"] == pytest.approx(run.data.metrics["test_acc"])
    assert len([k for k in metrics if k.startswith("adv_acc_c")]) == 10

    bad = mlflow_run("evaluate", {"preset": "smoke", "data": str(shared_archive), "eps": "2"}, env, tmp_path)
    assert bad.returncode != 0
    assert "eps 2.0 is outside [0, 1]" in bad.stderr
    failed = client.search_runs([imbadv], filter_string="attributes.status = 'FAILED'")
    assert len(failed) == 1
