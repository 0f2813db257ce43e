"""A training killed with SIGKILL and run again continues its own run to bit-identical weights."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from imbadv import tracking

OPTIONS = ["--preset", "smoke", "--epochs", "4", "--patience", "4", "--device", "cpu"]


def _train(store: str, data, cache, cwd, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "IMBADV_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "imbadv", "train", *OPTIONS, "--data", str(data), *extra],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _runs(client: MlflowClient, status: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"attributes.status = '{status}'")


def _epochs_logged(client: MlflowClient) -> int:
    running = _runs(client, "RUNNING")
    return len(client.get_metric_history(running[0].info.run_id, "train_loss")) if running else 0


@pytest.mark.slow
def test_sigkilled_training_resumes_to_bit_identical_weights(store, small_data, session_cache, tmp_path):
    client = MlflowClient()
    reference = _train(store, small_data, session_cache, tmp_path)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]
    (done,) = _runs(client, "FINISHED")
    expected = client.get_model_version(
        "imbadv-cifar10-small-balanced", "1").tags["weights_sha256"]

    rng = random.Random(0)
    for attempt, point in enumerate(("after epoch 1", "after epoch 3", "at a random moment"), start=2):
        process = _train(store, small_data, session_cache, tmp_path)
        deadline = time.monotonic() + 600
        if point == "at a random moment":
            time.sleep(rng.uniform(4.0, 9.0))
        else:
            epochs = int(point[-1])
            while _epochs_logged(client) < epochs and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        assert process.poll() is None, f"training ended before the kill {point}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        (killed,) = _runs(client, "RUNNING")  # SIGKILL leaves the run RUNNING

        again = _train(store, small_data, session_cache, tmp_path)
        output = again.communicate(timeout=600)[0]
        assert again.returncode == 0, output[-3000:]
        assert _runs(client, "RUNNING") == []
        resumed = client.get_run(killed.info.run_id)
        assert resumed.info.status == "FINISHED", point  # the same run, continued
        version = client.get_model_version("imbadv-cifar10-small-balanced", str(attempt))
        assert version.run_id == killed.info.run_id
        assert version.tags["weights_sha256"] == expected, point
        steps = [m.step for m in client.get_metric_history(killed.info.run_id, "val_loss")]
        assert sorted(set(steps)) == [1, 2, 3, 4], point
    assert len(_runs(client, "FINISHED")) == 4 and done.info.run_id != killed.info.run_id


def test_a_live_run_is_never_taken_over(store, small_data, session_cache):
    import mlflow

    from imbadv.train_job import resumable_run, train_key
    from imbadv.config import resolve_train_config

    options = {"preset": "smoke", "data": str(small_data), "cache_dir": str(session_cache), "device": "cpu"}
    key = train_key(resolve_train_config(**options))
    mlflow.set_experiment("imbadv")
    with mlflow.start_run(tags={tracking.TAG_TRAIN_KEY: key, tracking.TAG_HOST: socket.gethostname(),
                                tracking.TAG_PID: str(os.getpid())}) as live:
        assert resumable_run(options) is None  # this process is alive
        MlflowClient().set_tag(live.info.run_id, tracking.TAG_PID, "999999999")
        assert resumable_run(options) == live.info.run_id  # its process is gone
