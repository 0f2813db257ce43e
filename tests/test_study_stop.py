"""A study stopped with SIGTERM or Ctrl-C takes its workers with it, marks its runs KILLED, and the same
command resumes its trainings.

The trainings are given more epochs than any machine finishes, so the stop always lands inside them;
the stop waits for an event (each training's first checkpoint in the store), never for a time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imbadv.tracking import lifecycle, names
from imbadv.tracking.ui import group_alive

SAFETY_S = 900  # a safety net against a hang, not a pace: no check waits on a clock
ENDLESS = "epochs=100000,patience=100000"  # trainings that are always mid-way when stopped


def _study(store: str, data: Path, cache: Path, cwd: Path, output: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store, IMBADV_CACHE=str(cache))
    with output.open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data", str(data),
                                 "--classes", "3", "--jobs", "2", "--device", "cpu", "--train-options", ENDLESS],
                                env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)


def _trainings(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`{names.TAG_JOB}` = 'train'")


def _wait_for(condition, process: subprocess.Popen, output: Path) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        assert process.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, output.read_text()[-3000:]
        time.sleep(0.5)


def _checkpointed(client: MlflowClient, runs: list) -> bool:
    folder = names.CHECKPOINT_ARTIFACT.rsplit("/", 1)[0]
    return all(any(a.path == names.CHECKPOINT_ARTIFACT for a in client.list_artifacts(r.info.run_id, folder))
               for r in runs)


def _stop(process: subprocess.Popen, how: str) -> None:
    if how == "sigterm":  # to the study's process only, as `kill PID` or a scheduler's stop
        process.send_signal(signal.SIGTERM)
    else:  # Ctrl-C: the terminal signals the whole foreground process group
        os.killpg(process.pid, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_stopped_study_leaves_no_worker_and_its_rerun_resumes_the_same_trainings(
        how, store, synthetic_data, session_cache, tmp_path, sigkill_group):
    client = MlflowClient()
    cwd = Path(store.removeprefix("sqlite:///")).parent
    output = tmp_path / "study.log"
    study = _study(store, synthetic_data, session_cache, cwd, output)
    try:  # the two workers' trainings (balanced, under-sampled cat) each past their first epoch
        _wait_for(lambda: len(runs := _trainings(client)) == 2 and _checkpointed(client, runs), study, output)
        _stop(study, how)
        assert study.wait(timeout=SAFETY_S) == 130, output.read_text()[-3000:]
        deadline = time.monotonic() + SAFETY_S
        while group_alive(study.pid):  # the workers went with the study (and its resource tracker after it)
            assert time.monotonic() < deadline, "a worker outlived its stopped study"
            time.sleep(0.05)
    finally:
        sigkill_group(study)
    text = output.read_text()
    assert "imbadv: stopped" in text and "Traceback" not in text
    stopped = {r.info.run_id: r for r in _trainings(client)}
    assert {r.info.status for r in stopped.values()} == {"KILLED"}
    assert {r.data.tags[names.TAG_ERROR] for r in stopped.values()} == {lifecycle.STOPPED}
    (parent,) = {r.data.tags["mlflow.parentRunId"] for r in stopped.values()}
    assert client.get_run(parent).info.status == "KILLED"

    again = _study(store, synthetic_data, session_cache, cwd, tmp_path / "again.log")
    try:  # the same runs, taken up again from their checkpoints; no training starts afresh
        _wait_for(lambda: {r.info.status for r in _trainings(client)} == {"RUNNING"}, again, tmp_path / "again.log")
        assert {r.info.run_id for r in _trainings(client)} == set(stopped)
    finally:
        sigkill_group(again)
