"""A training killed with SIGKILL and run again continues its own run to bit-identical weights.

Every kill point is an event of the training job (tests/sigkill_at.py: the process kills itself as a
batch starts, once an epoch's metrics or checkpoint are logged), never a time since the start, so the
outcome does not depend on how fast the machine is. The data are synthetic: no archive needed.
"""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from conftest import complete
from sigkill_at import SIGNAL_VARIABLE, command

from imbadv.tracking import names

EPOCHS = 4
OPTIONS = ["--preset", "smoke", "--epochs", str(EPOCHS), "--patience", str(EPOCHS), "--device", "cpu"]
SAFETY_S = 900  # a safety net against a hang, not a pace: no check waits on a clock


def _train(store: str, data: Path, cache: Path, cwd: Path, output: Path,
           kill_at: str | None = None, kill_signal: str = "SIGKILL") -> subprocess.Popen:
    """`imbadv train` on the smoke preset, its output going to the file `output`; with `kill_at`, the
    process sends itself `kill_signal` at that event (tests/sigkill_at.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store, IMBADV_CACHE=str(cache), **{SIGNAL_VARIABLE: kill_signal})
    with output.open("w") as log:  # a file, not a pipe: a pipe nobody reads while it runs can fill up
        return subprocess.Popen(command(kill_at, "train", *OPTIONS, "--data", str(data)), env=env, cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _runs(client: MlflowClient, status: str | None = None) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"attributes.status = '{status}'" if status else "")


def _epochs_logged(client: MlflowClient, run_id: str) -> int:
    return len({m.step for m in client.get_metric_history(run_id, "train_loss")})


def _version_of(client: MlflowClient, run_id: str):
    (version,) = [v for v in client.search_model_versions("name = 'imbadv-cifar10-small-balanced'")
                  if v.run_id == run_id]
    return version


@pytest.fixture(scope="module")
def reference(module_store, synthetic_data, session_cache, tmp_path_factory) -> SimpleNamespace:
    """An uninterrupted training: its weights' hash, and how many batches one of its epochs has."""
    client = MlflowClient(tracking_uri=module_store, registry_uri=module_store)
    cwd = Path(module_store.removeprefix("sqlite:///")).parent
    output = tmp_path_factory.mktemp("reference") / "train.log"
    complete(_train(module_store, synthetic_data, session_cache, cwd, output), output)
    (run,) = _runs(client, "FINISHED")
    assert _epochs_logged(client, run.info.run_id) == EPOCHS
    params = run.data.params
    return SimpleNamespace(store=module_store, cwd=cwd, client=client, run_id=run.info.run_id,
                           weights=_version_of(client, run.info.run_id).tags["weights_sha256"],
                           batches=math.ceil(int(params["train_images"]) / int(params["config.batch_size"])))


@pytest.mark.slow
def test_a_training_killed_before_its_run_exists_leaves_none_and_the_next_trains_afresh(
        reference, synthetic_data, session_cache, tmp_path, sigkill_group):
    client = reference.client
    before = {r.info.run_id for r in _runs(client)}
    process = _train(reference.store, synthetic_data, session_cache, reference.cwd, tmp_path / "killed.log")
    sigkill_group(process)  # at once: the interpreter has not imported MLflow yet
    assert {r.info.run_id for r in _runs(client)} == before  # no run, so nothing to resume

    output = complete(_train(reference.store, synthetic_data, session_cache, reference.cwd, tmp_path / "again.log"),
                       tmp_path / "again.log")
    (fresh,) = [r for r in _runs(client) if r.info.run_id not in before]
    assert fresh.info.status == "FINISHED" and "resuming run" not in output
    assert sorted({m.step for m in client.get_metric_history(fresh.info.run_id, "val_loss")}) == [1, 2, 3, 4]
    assert _version_of(client, fresh.info.run_id).tags["weights_sha256"] == reference.weights


def _random_batch(reference: SimpleNamespace) -> str:
    """A seeded random batch of a seeded random epoch: the kill lands inside an epoch, mid-way."""
    rng = random.Random(0)
    return f"batch:{rng.randint(1, EPOCHS)}:{rng.randint(1, reference.batches)}"


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["checkpoint:1", "metrics:3", _random_batch],
                         ids=["after epoch 1's checkpoint", "after epoch 3's metrics, before its checkpoint",
                              "inside a random batch"])
def test_a_sigkilled_training_resumes_its_run_to_bit_identical_weights(
        reference, kill_at, synthetic_data, session_cache, tmp_path, sigkill_group):
    client = reference.client
    event = kill_at if isinstance(kill_at, str) else kill_at(reference)
    finished = len(_runs(client, "FINISHED"))
    killed = _train(reference.store, synthetic_data, session_cache, reference.cwd, tmp_path / "killed.log", event)
    assert killed.wait(timeout=SAFETY_S) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert f"sigkill_at: {event}" in (tmp_path / "killed.log").read_text()
    sigkill_group(killed)  # and anything it started
    (run,) = [r for r in _runs(client, "RUNNING") if r.data.tags.get(names.TAG_PID) == str(killed.pid)]
    run_id = run.info.run_id  # SIGKILL leaves the run RUNNING
    epochs = _epochs_logged(client, run_id)  # where the training was
    checkpointed = any(a.path == names.CHECKPOINT_ARTIFACT
                       for a in client.list_artifacts(run_id, names.CHECKPOINT_ARTIFACT.rsplit("/", 1)[0]))
    kind, epoch = event.split(":")[:2]
    assert checkpointed == (kind == "checkpoint" or int(epoch) > 1), event  # an epoch's checkpoint comes last

    output = complete(_train(reference.store, synthetic_data, session_cache, reference.cwd, tmp_path / "again.log"),
                      tmp_path / "again.log")
    assert (f"resuming run {run_id} from its checkpoint" in output) == checkpointed, (epochs, output[-3000:])
    assert _runs(client, "RUNNING") == []
    assert client.get_run(run_id).info.status == "FINISHED"  # the same run, continued
    assert len(_runs(client, "FINISHED")) == finished + 1  # and no other
    assert sorted({m.step for m in client.get_metric_history(run_id, "val_loss")}) == [1, 2, 3, 4]
    assert _version_of(client, run_id).tags["weights_sha256"] == reference.weights, f"killed at {event}"


@pytest.mark.slow
def test_a_training_stopped_with_ctrl_c_ends_killed_and_resumes_to_bit_identical_weights(
        reference, synthetic_data, session_cache, tmp_path, sigkill_group):
    client = reference.client
    event = "checkpoint:2"
    stopped = _train(reference.store, synthetic_data, session_cache, reference.cwd, tmp_path / "stopped.log", event,
                     kill_signal="SIGINT")
    assert stopped.wait(timeout=SAFETY_S) == 130, (tmp_path / "stopped.log").read_text()[-3000:]
    text = (tmp_path / "stopped.log").read_text()
    assert f"sigkill_at: {event}" in text and "imbadv: stopped" in text and "Traceback" not in text
    sigkill_group(stopped)
    (run,) = [r for r in _runs(client) if r.data.tags.get(names.TAG_PID) == str(stopped.pid)]
    assert run.info.status == "KILLED"  # stopped, not FAILED: a FAILED training is never resumed

    output = complete(_train(reference.store, synthetic_data, session_cache, reference.cwd, tmp_path / "again.log"),
                      tmp_path / "again.log")
    assert f"resuming run {run.info.run_id} from its checkpoint" in output
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert _version_of(client, run.info.run_id).tags["weights_sha256"] == reference.weights


def test_a_live_run_is_never_taken_over(store, synthetic_data, session_cache):
    import mlflow

    from imbadv.jobs.train import resumable_run
    from imbadv.tracking.provenance import train_key
    from imbadv.config import resolve_train_config

    options = {"preset": "smoke", "data": str(synthetic_data), "cache_dir": str(session_cache), "device": "cpu"}
    config = resolve_train_config(**options)
    key = train_key(config)
    mlflow.set_experiment("imbadv")
    with mlflow.start_run(tags={names.TAG_TRAIN_KEY: key, names.TAG_HOST: socket.gethostname(),
                                names.TAG_PID: str(os.getpid())}) as live:
        assert resumable_run(config) is None  # this process is alive
        MlflowClient().set_tag(live.info.run_id, names.TAG_PID, "999999999")
        assert resumable_run(config) == live.info.run_id  # its process is gone
