"""A training killed after registering its model version, before its run ended, and run again finishes
that run with that one version: never a second version of the same model.

The kill is an event (tests/sigkill_at.py): the process SIGKILLs itself right after the version is
created (its description and alias not yet set), or right after the registration is complete. The
data are synthetic: no archive needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import complete
from sigkill_at import command

from imbadv.tracking import names, registry

SAFETY_S = 900  # a safety net against a hang, not a pace


def _train(store: str, data: Path, cache: Path, output: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store, IMBADV_CACHE=str(cache))
    with output.open("w") as log:
        return subprocess.Popen(command(kill_at, "train", "--preset", "smoke", "--epochs", "1", "--device", "cpu",
                                        "--data", str(data)),
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["registered", "aliased"],
                         ids=["after the version is created", "after the alias is set"])
def test_a_training_killed_after_registering_resumes_to_its_one_version(
        store, synthetic_data, session_cache, tmp_path, sigkill_group, kill_at):
    client = MlflowClient()
    name = names.registered_model_name(synthetic_data.name, "balanced", None)
    killed = _train(store, synthetic_data, session_cache, tmp_path / "killed.log", kill_at)
    assert killed.wait(timeout=SAFETY_S) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert f"sigkill_at: {kill_at}" in (tmp_path / "killed.log").read_text()
    sigkill_group(killed)  # and anything it started
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "RUNNING"  # SIGKILL leaves the run RUNNING, its version registered
    (version,) = client.search_model_versions(f"name = '{name}'")
    assert version.run_id == run.info.run_id
    assert bool(version.description) == (kill_at == "aliased")

    output = complete(_train(store, synthetic_data, session_cache, tmp_path / "again.log"), tmp_path / "again.log")
    assert f"resuming run {run.info.run_id} from its checkpoint" in output
    assert f"registered {name} version {version.version} before it was interrupted" in output
    (again,) = client.search_model_versions(f"name = '{name}'")  # the same version, and no other
    assert again.version == version.version and again.run_id == run.info.run_id
    assert again.description.startswith("imbadv VGG classifier")
    assert str(client.get_model_version_by_alias(name, "smoke-s0").version) == str(version.version)
    (finished,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert finished.info.run_id == run.info.run_id and finished.info.status == "FINISHED"

    # What counts as the same registration: this run, these files, this alias.
    tags = dict(again.tags)
    assert registry.registered_by_run(client, run.info.run_id, name, tags).version == version.version
    assert registry.registered_by_run(client, run.info.run_id, name, {**tags, "onnx_sha256": "0" * 64}) is None
    assert registry.registered_by_run(client, run.info.run_id, name, {**tags, names.VERSION_ALIAS: "smoke-s1"}) is None

