"""A training killed with SIGKILL and run again continues its own run to bit-identical weights.

Every kill point is an event read from the store (the run exists, an epoch's metrics are logged),
never a time since the start, so the outcome does not depend on how fast the machine is.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from conftest import complete

from imbadv.tracking import names

EPOCHS = 4
OPTIONS = ["--preset", "smoke", "--epochs", str(EPOCHS), "--patience", str(EPOCHS), "--device", "cpu"]
SAFETY_S = 900  # a safety net against a hang, not a pace: no check waits on a clock


def _train(store: str, data: Path, cache: Path, cwd: Path, output: Path) -> subprocess.Popen:
    """`imbadv train` on the smoke preset, its output going to the file `output`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store, IMBADV_CACHE=str(cache))
    with output.open("w") as log:  # a file, not a pipe: a pipe nobody reads while it runs can fill up
        return subprocess.Popen([sys.executable, "-m", "imbadv", "train", *OPTIONS, "--data", str(data)], env=env,
                                cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _runs(client: MlflowClient, status: str | None = None) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"attributes.status = '{status}'" if status else "")


def _run_of(client: MlflowClient, process: subprocess.Popen):
    """The run `process` writes to, once it carries its train key (from then on a rerun can resume it)."""
    runs = [r for r in _runs(client, "RUNNING") if r.data.tags.get(names.TAG_PID) == str(process.pid)]
    return runs[0] if runs and names.TAG_TRAIN_KEY in runs[0].data.tags else None


def _epochs_logged(client: MlflowClient, run_id: str) -> int:
    return len({m.step for m in client.get_metric_history(run_id, "train_loss")})


def _wait_for(condition: Callable[[], object], process: subprocess.Popen, output: Path, what: str):
    """Poll until `condition()` is true while `process` runs; fails loudly if it ends first."""
    deadline = time.monotonic() + SAFETY_S
    while not (found := condition()):
        assert process.poll() is None, f"the training ended before {what}: {output.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {SAFETY_S} s"
        time.sleep(0.05)
    return found


def _version_of(client: MlflowClient, run_id: str):
    (version,) = [v for v in client.search_model_versions("name = 'imbadv-cifar10-small-balanced'")
                  if v.run_id == run_id]
    return version


@pytest.fixture(scope="module")
def reference(module_store, small_data, session_cache, tmp_path_factory) -> SimpleNamespace:
    """An uninterrupted training: its weights' hash, and how long one of its epochs took."""
    client = MlflowClient(tracking_uri=module_store, registry_uri=module_store)
    cwd = Path(module_store.removeprefix("sqlite:///")).parent
    output = tmp_path_factory.mktemp("reference") / "train.log"
    complete(_train(module_store, small_data, session_cache, cwd, output), output)
    (run,) = _runs(client, "FINISHED")
    stamps = sorted(m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert len(stamps) == EPOCHS
    return SimpleNamespace(store=module_store, cwd=cwd, client=client, run_id=run.info.run_id,
                           weights=_version_of(client, run.info.run_id).tags["weights_sha256"],
                           epoch_s=statistics.median(b - a for a, b in itertools.pairwise(stamps)) / 1000)


@pytest.mark.slow
def test_a_training_killed_before_its_run_exists_leaves_none_and_the_next_trains_afresh(
        reference, small_data, session_cache, tmp_path, sigkill_group):
    client = reference.client
    before = {r.info.run_id for r in _runs(client)}
    process = _train(reference.store, small_data, session_cache, reference.cwd, tmp_path / "killed.log")
    sigkill_group(process)  # at once: the interpreter has not imported MLflow yet
    assert {r.info.run_id for r in _runs(client)} == before  # no run, so nothing to resume

    output = complete(_train(reference.store, small_data, session_cache, reference.cwd, tmp_path / "again.log"),
                       tmp_path / "again.log")
    (fresh,) = [r for r in _runs(client) if r.info.run_id not in before]
    assert fresh.info.status == "FINISHED" and "resuming run" not in output
    assert sorted({m.step for m in client.get_metric_history(fresh.info.run_id, "val_loss")}) == [1, 2, 3, 4]
    assert _version_of(client, fresh.info.run_id).tags["weights_sha256"] == reference.weights


def _after_epoch(epoch: int) -> Callable[..., None]:
    def wait(client, process, output, run_id, reference):
        _wait_for(lambda: _epochs_logged(client, run_id) >= epoch, process, output, f"epoch {epoch}'s metrics")
    return wait


def _at_a_random_moment(client, process, output, run_id, reference) -> None:
    """A seeded random point inside epoch 1, 2 or 3 (the draw: 55% into epoch 2), scaled by the reference's
    epoch time; at the latest that epoch's end, so at least the last epoch is still to run when the kill comes."""
    rng = random.Random(0)
    epoch, fraction = rng.randrange(1, EPOCHS), rng.uniform(0.1, 0.7)
    if epoch > 1:
        _wait_for(lambda: _epochs_logged(client, run_id) >= epoch - 1, process, output, f"epoch {epoch - 1}")
    until = time.monotonic() + fraction * reference.epoch_s
    while time.monotonic() < until and _epochs_logged(client, run_id) < epoch:
        assert process.poll() is None, output.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", [_after_epoch(1), _after_epoch(3), _at_a_random_moment],
                         ids=["after epoch 1", "after epoch 3", "at a random moment"])
def test_a_sigkilled_training_resumes_its_run_to_bit_identical_weights(
        reference, kill_point, small_data, session_cache, tmp_path, sigkill_group):
    client = reference.client
    finished = len(_runs(client, "FINISHED"))
    process = _train(reference.store, small_data, session_cache, reference.cwd, tmp_path / "killed.log")
    run_id = _wait_for(lambda: _run_of(client, process), process, tmp_path / "killed.log", "its run").info.run_id
    kill_point(client, process, tmp_path / "killed.log", run_id, reference)
    assert process.poll() is None, "the training ended before the kill"
    sigkill_group(process)
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL leaves the run RUNNING
    epochs = _epochs_logged(client, run_id)  # read after the kill: where the training was
    checkpointed = any(a.path == names.CHECKPOINT_ARTIFACT
                       for a in client.list_artifacts(run_id, names.CHECKPOINT_ARTIFACT.rsplit("/", 1)[0]))

    output = complete(_train(reference.store, small_data, session_cache, reference.cwd, tmp_path / "again.log"),
                       tmp_path / "again.log")
    assert (f"resuming run {run_id} from its checkpoint" in output) == checkpointed, (epochs, output[-3000:])
    assert _runs(client, "RUNNING") == []
    assert client.get_run(run_id).info.status == "FINISHED"  # the same run, continued
    assert len(_runs(client, "FINISHED")) == finished + 1  # and no other
    assert sorted({m.step for m in client.get_metric_history(run_id, "val_loss")}) == [1, 2, 3, 4]
    assert _version_of(client, run_id).tags["weights_sha256"] == reference.weights, f"killed after {epochs} epochs"


def test_a_live_run_is_never_taken_over(store, small_data, session_cache):
    import mlflow

    from imbadv.jobs.train import resumable_run
    from imbadv.tracking.provenance import train_key
    from imbadv.config import resolve_train_config

    options = {"preset": "smoke", "data": str(small_data), "cache_dir": str(session_cache), "device": "cpu"}
    config = resolve_train_config(**options)
    key = train_key(config)
    mlflow.set_experiment("imbadv")
    with mlflow.start_run(tags={names.TAG_TRAIN_KEY: key, names.TAG_HOST: socket.gethostname(),
                                names.TAG_PID: str(os.getpid())}) as live:
        assert resumable_run(config) is None  # this process is alive
        MlflowClient().set_tag(live.info.run_id, names.TAG_PID, "999999999")
        assert resumable_run(config) == live.info.run_id  # its process is gone
