"""Several writers on one store: a fresh SQLite store opened by many processes at once, writes
retried while SQLite is locked, and concurrent registrations of one name ending on the newest."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import tenacity
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imbadv.tracking import registry
from imbadv.tracking import store
from imbadv.tracking import names


def test_sqlite_path_of_tracking_uris(tmp_path):
    assert store.sqlite_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert store.sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert store.sqlite_path("sqlite:///:memory:") is None
    assert store.sqlite_path("http://127.0.0.1:5000") is None
    assert store.sqlite_path("postgresql://u@localhost/db") is None


@pytest.mark.parametrize("locked", [
    sqlite3.OperationalError("database is locked"),
    MlflowException("(sqlite3.OperationalError) database is locked"),
    # a concurrent run inserted the same new dataset first (SQLite, PostgreSQL)
    MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
                    "datasets.digest"),
    MlflowException('(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'),
])
def test_writes_are_retried_while_the_store_is_locked(locked, monkeypatch):
    monkeypatch.setattr(store, "RETRY_WAIT", tenacity.wait_none())
    calls = []

    def write(value):
        calls.append(value)
        if len(calls) < 3:
            raise locked
        return value * 2

    assert store.call(write, 21) == 42 and len(calls) == 3


@pytest.mark.parametrize("error", [
    MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"),
    MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: registered_models.name"),
])
def test_other_errors_are_not_retried(error):
    calls = []

    def write():
        calls.append(1)
        raise error

    with pytest.raises(MlflowException):
        store.call(write)
    assert len(calls) == 1


@pytest.mark.slow
def test_alias_moves_to_the_newest_version_registered_for_it(store):
    client = MlflowClient()
    client.create_registered_model("m")
    versions = [client.create_model_version("m", "file:///nowhere", tags={names.VERSION_ALIAS: alias}).version
                for alias in ("cpu-s0", "cpu-s0", "smoke-s0")]
    client.set_registered_model_alias("m", "cpu-s0", versions[0])  # stale: as a slower racer would leave it
    assert registry.point_alias_at_newest("m", "cpu-s0") == int(versions[1])
    assert client.get_model_version_by_alias("m", "cpu-s0").version == versions[1]
    assert registry.point_alias_at_newest("m", "smoke-s0") == int(versions[2])  # other aliases: their own newest


PROBE = """
import sys
import mlflow
from imbadv.tracking import lifecycle, names
with lifecycle.job_run("probe", "probe-" + sys.argv[1]):
    for step in range(30):
        mlflow.log_metric("value", step, step=step)
    mlflow.log_params({"process": sys.argv[1]})
"""


@pytest.mark.slow
def test_many_processes_opening_a_fresh_sqlite_store_all_record_their_runs(tmp_path):
    """Without the lock around schema creation, concurrent first use breaks MLflow's migrations."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    processes = [subprocess.Popen([sys.executable, "-c", PROBE, str(i)], env=env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(8)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, "\n".join(o[-2000:] for o in outputs)
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert [e.name for e in experiments if e.name == names.EXPERIMENT] == [names.EXPERIMENT]
    assert sorted(r.data.params["process"] for r in runs) == [str(i) for i in range(8)]
    assert all(r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "value")) == 30
               for r in runs)


@pytest.mark.slow
def test_eight_trainings_at_once_all_finish_and_register_with_the_alias_on_the_newest(store, small_data,
                                                                                       session_cache, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "IMBADV_CACHE": str(session_cache)}
    command = [sys.executable, "-m", "imbadv", "train", "--preset", "smoke", "--data", str(small_data),
               "--epochs", "1", "--device", "cpu"]
    # Load the data into the cache first, so that the eight processes only race on the store.
    subprocess.run([sys.executable, "-c", f"from imbadv.core.data import load_dataset; "
                    f"load_dataset({str(small_data)!r}, {str(session_cache)!r})"], check=True, env=env)
    processes = [subprocess.Popen(command, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(8)]
    outputs = [p.communicate(timeout=1200)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, "\n".join(o[-2000:] for o in outputs)

    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`{names.TAG_JOB}` = 'train'")
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    name = names.registered_model_name(small_data.name, "balanced", None)
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 9))
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)
    assert int(client.get_model_version_by_alias(name, "smoke-s0").version) == 8


def test_the_experiment_is_marked_for_model_training_so_the_ui_opens_on_its_runs(store):
    from imbadv.tracking import store as tracking_store

    client = MlflowClient()
    made = tracking_store.prepare("imbadv")
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("made-elsewhere")
    tracking_store.prepare("made-elsewhere")
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
