"""The run a job logs into, and the study step it belongs to.

The tracking URI is MLflow's own (MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working
directory). Every job run carries the job's name, host and process id, and the provenance tags.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import mlflow
from mlflow.tracking import MlflowClient

from imbadv.config import first_line
from imbadv.tracking import liveness, store
from imbadv.tracking.names import EXPERIMENT, TAG_ERROR, TAG_HOST, TAG_JOB, TAG_PID, TAG_STEP_KEY
from imbadv.tracking.provenance import provenance_tags

STOPPED = "stopped by Ctrl-C or SIGTERM: rerun the same command to continue"

# Set by a study for the steps it runs: the parent run and the step's reuse key.
_STEP_TAGS: ContextVar[dict[str, str] | None] = ContextVar("imbadv_step_tags", default=None)


@contextmanager
def step_tags(parent_run_id: str, step_key: str, extra: dict[str, str] | None = None) -> Iterator[None]:
    """Runs started inside are nested under `parent_run_id` and carry the step's reuse key (and `extra`)."""
    token = _STEP_TAGS.set({"mlflow.parentRunId": parent_run_id, TAG_STEP_KEY: step_key, **(extra or {})})
    try:
        yield
    finally:
        _STEP_TAGS.reset(token)


def current_step_key() -> str | None:
    """The reuse key of the study step running now, if any."""
    return (_STEP_TAGS.get() or {}).get(TAG_STEP_KEY)


@contextmanager
def job_run(job: str, run_name: str, run_id: str | None = None,
            tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """The run a job logs into: `run_id` (resuming it), the one `mlflow run` created, or a new one.

    A new run carries the job, host, process id and `tags` from its creation, so a process killed
    at any moment after it leaves a run that names its owner. On any exception the run gets an
    `imbadv.error` tag and ends FAILED, on KeyboardInterrupt KILLED (a killed training is resumed
    from its checkpoint); the exception propagates.
    """
    chosen_elsewhere = mlflow.active_run() is not None or _env_run_id() or os.environ.get("MLFLOW_EXPERIMENT_ID") \
        or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    store.prepare(None if chosen_elsewhere else EXPERIMENT)
    made_by_mlflow_run = bool(_env_run_id()) and not run_id  # start_run consumes MLFLOW_RUN_ID
    name = None if (_env_run_id() or run_id) else run_name
    owner = {TAG_JOB: job, TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()), **(tags or {})}
    run = store.call(mlflow.start_run, run_id=run_id, run_name=name,
                     tags=None if run_id else {**(_STEP_TAGS.get() or {}), **owner})
    status = "FINISHED"
    try:
        # a resumed run takes the step's tags of this attempt too (the node it now runs on)
        store.call(mlflow.set_tags, {**(_STEP_TAGS.get() or {}), **owner, **provenance_tags()})
        if made_by_mlflow_run:  # with a random name
            store.call(MlflowClient().update_run, run.info.run_id, name=run_name)
        yield run
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM to a study: stopped, not failed, so a training resumes
        status = "KILLED"
        store.call(mlflow.set_tag, TAG_ERROR, STOPPED)
        raise
    except BaseException as error:
        status = "FAILED"
        store.call(mlflow.set_tag, TAG_ERROR, first_line(error)[:5000])
        raise
    finally:
        store.call(mlflow.end_run, status)


def open_run(run_id: str | None, run_name: str) -> mlflow.ActiveRun:
    """Start run `run_id` again, or a new run named `run_name` (a context manager, as `mlflow.start_run`)."""
    return store.call(mlflow.start_run, run_id=run_id, run_name=run_name)


def end_stopped() -> None:
    """End the active run KILLED, tagged as stopped (Ctrl-C or SIGTERM), not FAILED."""
    store.call(mlflow.set_tag, TAG_ERROR, STOPPED)
    store.call(mlflow.end_run, "KILLED")


def mark_stopped(parent_run_id: str, experiment_id: str) -> list[str]:
    """End KILLED the runs under `parent_run_id` still RUNNING whose process is gone (a stopped study's
    killed workers); returns their ids. A killed training is resumed from its checkpoint."""
    client = MlflowClient()
    runs = store.call(client.search_runs, [experiment_id],
                      filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'")
    stopped = [run.info.run_id for run in runs if liveness.process_is_gone(run)]
    for run_id in stopped:
        store.call(client.set_tag, run_id, TAG_ERROR, STOPPED)
        store.call(client.set_terminated, run_id, "KILLED")
    return stopped


def delete_run(run_id: str) -> None:
    store.call(MlflowClient().delete_run, run_id)


def _env_run_id() -> str | None:
    return os.environ.get("MLFLOW_RUN_ID")
