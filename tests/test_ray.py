"""The study on a real Ray cluster of two nodes on 127.0.0.1, against a real `mlflow server`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imbadv.tracking import names

pytestmark = [pytest.mark.slow, pytest.mark.server]

CLASS = "3"  # one class: balanced, under-c3, over-c3 and their 5 evaluations


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node of one CPU each, on 127.0.0.1; shut down at the end, also on failure."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the nodes listen on 127.0.0.1 only
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def _env(store: str, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    return env | {"MLFLOW_TRACKING_URI": store, "IMBADV_CACHE": str(cache)}


def _reproduce(store: str, data: Path, cache: Path, cwd: Path, *extra: str, background: bool = False):
    local = "--executor" not in extra  # Ray runs as many steps at once as the cluster has CPUs for
    command = [sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data", str(data),
               "--classes", CLASS, "--device", "cpu", *(["--jobs", "2"] if local else []), *extra]
    if background:
        log = (cwd / "study.log").open("w")
        return subprocess.Popen(command, env=_env(store, cache), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(command, env=_env(store, cache), cwd=cwd, capture_output=True, text=True, timeout=1200,
                          check=False)


def _steps(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments, max_results=1000)
            if r.data.tags.get(names.TAG_JOB) in ("train", "evaluate")]


def _table1(store: str, data: Path, cwd: Path, cache: Path) -> list[dict[str, str]]:
    result = subprocess.run([sys.executable, "-m", "imbadv", "report", "--preset", "smoke", "--data", str(data),
                             "--output-dir", str(cwd / "reports")], env=_env(store, cache), cwd=cwd,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(cwd / "reports" / f"{data.name}-smoke" / "table1.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["class_name"] in ("cat", "mean")]


def test_the_study_runs_on_both_nodes_and_equals_the_local_executors(cluster, tracking_server, small_data,
                                                                      session_cache, tmp_path):
    ray_dir, local_dir = tmp_path / "ray", tmp_path / "local"
    ray_dir.mkdir(), local_dir.mkdir()
    result = _reproduce(tracking_server.uri, small_data, session_cache, ray_dir, "--executor", "ray",
                        "--ray-address", cluster.address)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    steps = _steps(client)
    assert Counter(r.data.tags[names.TAG_JOB] for r in steps) == {"train": 3, "evaluate": 5}
    assert all(r.info.status == "FINISHED" and r.data.tags[names.TAG_EXECUTOR] == "ray" for r in steps)
    nodes = {r.data.tags[names.TAG_RAY_NODE] for r in steps}
    assert nodes <= {node["NodeID"] for node in _nodes(cluster)} and len(nodes) == 2  # both nodes ran steps

    local_store = f"sqlite:///{local_dir / 'mlflow.db'}"
    local = _reproduce(local_store, small_data, session_cache, local_dir)
    assert local.returncode == 0, local.stderr[-3000:]
    local_steps = _steps(MlflowClient(tracking_uri=local_store, registry_uri=local_store))
    assert {r.data.tags[names.TAG_EXECUTOR] for r in local_steps} == {"local"}
    assert _table1(tracking_server.uri, small_data, ray_dir, session_cache) == _table1(local_store, small_data,
                                                                                      local_dir, session_cache)
    again = _reproduce(tracking_server.uri, small_data, session_cache, ray_dir, "--executor", "ray",
                       "--ray-address", cluster.address)
    assert again.returncode == 0 and "0 steps ran, 8 reused" in again.stdout, again.stdout[-2000:]


def _nodes(cluster) -> list[dict]:
    import ray

    ray.init(address=cluster.address, ignore_reinit_error=True)
    try:
        return [node for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()


def test_a_local_store_with_a_multi_node_cluster_is_refused_before_any_run(cluster, small_data, session_cache,
                                                                          tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _reproduce(store, small_data, session_cache, tmp_path, "--executor", "ray", "--ray-address",
                        cluster.address)
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if "is a store on this machine" in line]
    assert "the Ray cluster has 2 nodes" in line and "mlflow server" in line
    assert not (tmp_path / "mlflow.db").exists() or not _steps(MlflowClient(tracking_uri=store))


def test_a_training_whose_node_dies_resumes_on_another_and_each_step_runs_once(tracking_server, small_data,
                                                                               session_cache, tmp_path):
    """The worker node is killed in the middle of a training; Ray retries the task on the head node and
    the training resumes its run from the last checkpoint in the tracking store."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        worker_id = worker.node_id
        client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
        # long enough trainings to be caught in the middle: 20 epochs of the smoke models
        study = _reproduce(tracking_server.uri, small_data, session_cache, tmp_path, "--executor", "ray",
                           "--ray-address", cluster.address, "--train-options",
                           "epochs=20,patience=20,stopping=val-loss", background=True)
        victim = _wait_for_a_training_past_two_epochs(client, worker_id, study)
        cluster.remove_node(worker, allow_graceful=False)
        assert study.wait(timeout=1200) == 0, (tmp_path / "study.log").read_text()[-3000:]
    finally:
        cluster.shutdown()
    (parent,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()],
                                               filter_string=f"tags.`{names.TAG_JOB}` = 'study'")
                 if "epochs=20" in r.data.params.get("config.train_options", "")]
    runs = [r for r in _steps(client) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    keys = Counter(r.data.tags[names.TAG_STEP_KEY] for r in runs if r.info.status == "FINISHED")
    assert len(keys) == 8 and set(keys.values()) == {1}  # every step once
    resumed = client.get_run(victim)
    assert resumed.info.status == "FINISHED" and resumed.data.tags[names.TAG_RAY_NODE] != worker_id
    versions = Counter(v.name for v in client.search_model_versions() if v.run_id in {r.info.run_id for r in runs})
    assert set(versions.values()) == {1}  # one registry version per model


def _wait_for_a_training_past_two_epochs(client: MlflowClient, node_id: str, study: subprocess.Popen) -> str:
    experiments = lambda: [e.experiment_id for e in client.search_experiments()]  # noqa: E731
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert study.poll() is None, "the study ended before a training on the worker node was caught"
        for run in client.search_runs(experiments(), filter_string=(
                f"tags.`{names.TAG_JOB}` = 'train' and tags.`{names.TAG_RAY_NODE}` = '{node_id}' and "
                "attributes.status = 'RUNNING'")):
            if len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2:
                return run.info.run_id
        time.sleep(0.5)
    raise AssertionError("no training on the worker node reached its second epoch")


def test_four_quarter_gpu_trainings_run_at_once_on_one_gpu(session_cache, small_data, tmp_path):
    """Ray's GPUs are logical: a CPU node declaring one GPU packs four 0.25-GPU trainings, never five."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 1,
                                                            "include_dashboard": False})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        command = [sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data", str(small_data),
                   "--classes", "3,5", "--device", "cpu", "--executor", "ray", "--ray-address",
                   cluster.address, "--gpus-per-training", "0.25", "--train-options", "epochs=8,patience=8"]
        result = subprocess.run(command, env=_env(store, session_cache), cwd=tmp_path, capture_output=True, text=True,
                                timeout=1200, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        cluster.shutdown()
    trainings = [r for r in _steps(MlflowClient(tracking_uri=store, registry_uri=store))
                 if r.data.tags[names.TAG_JOB] == "train"]
    assert len(trainings) == 5
    events = sorted([(r.info.start_time, 1) for r in trainings] + [(r.info.end_time, -1) for r in trainings])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 4  # four quarters of the one GPU at once, and the fifth training waited for one
