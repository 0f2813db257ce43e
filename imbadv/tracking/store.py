"""The tracking store shared by concurrent jobs: ready before the first write, writes retried.

MLflow creates and migrates a SQLite store's schema on first use, and processes doing that at
once break each other's migration; so the first use here holds a file lock beside the database.
After that MLflow waits up to 20 s for SQLite's write lock and then raises "database is locked":
the writes below retry with exponential backoff. Two processes creating the same experiment at
once both end up using the one that exists, and two runs logging the same new dataset at once both
link to the one row that the faster of them inserted. A tracking server that does not answer is reported
before any run starts.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import filelock
import mlflow
import tenacity
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCKED = "database is locked"
# Two runs logging the same new dataset at once both find no row and both insert it; the slower
# write fails on the key (SQLite, PostgreSQL wording) and is rolled back whole, and its retry finds
# the row and links to it.
DATASET_INSERT_RACE = ("UNIQUE constraint failed: datasets.", 'unique constraint "dataset_pk"')
RETRY_SECONDS = 300.0  # give up after this long: a store locked for minutes is a real fault


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, or None for other stores and in-memory SQLite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class StoreUnreachable(RuntimeError):
    """The tracking server does not answer."""


def check_reachable(uri: str, attempts: int = 3, timeout: float = 5.0) -> None:
    """Fail fast, with the fix, when an http(s) tracking URI does not answer its health check.

    Once a job runs, MLflow's own retries ride out a server restart; this check only keeps a
    wrong or stopped server from costing minutes of retries before the first write.
    """
    if not uri.startswith(("http://", "https://")):
        return
    reason = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # it answers (a proxy or an auth layer may refuse /health itself)
        except OSError as error:
            reason = str(getattr(error, "reason", error))
            if attempt < attempts - 1:
                time.sleep(2.0 * (attempt + 1))
    raise StoreUnreachable(f"tracking server {uri} does not answer ({reason}): start it (mlflow server "
                           "--host 127.0.0.1 ...) or point MLFLOW_TRACKING_URI at one that runs")


def _is_transient(error: BaseException) -> bool:
    message = str(error)
    return LOCKED in message or any(race in message for race in DATASET_INSERT_RACE)


def _log_retry(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    reason = LOCKED if error is None or LOCKED in str(error) else "a concurrent run inserted the same dataset"
    log.warning("tracking store busy (%s): retry %d in %.1f s", reason, state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0)


RETRY_WAIT = tenacity.wait_exponential(multiplier=0.2, max=10.0) + tenacity.wait_random(0.0, 0.5)


def call(function: Callable[..., T], *args, **kwargs) -> T:
    """`function(*args, **kwargs)`, retried with backoff while the SQLite store is locked or after
    losing a dataset insert race."""
    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(_is_transient), wait=RETRY_WAIT,
                                 stop=tenacity.stop_after_delay(RETRY_SECONDS), before_sleep=_log_retry,
                                 reraise=True)
    return retrying(function, *args, **kwargs)


_READY: set[str] = set()  # tracking URIs this process has checked and opened


def prepare(experiment: str | None = None) -> str | None:
    """Create or migrate the store's schema (under a file lock for SQLite), then get or create
    `experiment` and make it the active one. Returns the experiment's id, or None without one.

    The reachability check and the schema set-up run once per process and tracking URI."""
    uri = mlflow.get_tracking_uri()
    path = sqlite_path(uri)
    if uri not in _READY:
        check_reachable(uri)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(f"{path}.lock") if path is not None else contextlib.nullcontext()
    with lock:
        client = MlflowClient()
        if uri not in _READY:
            call(client.search_experiments, max_results=1)  # opens the store: creates or migrates its schema
            _READY.add(uri)
        if experiment is None:
            return None
        experiment_id = call(_get_or_create, client, experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# The MLflow UI opens an experiment of this kind on its runs, not on the GenAI traces view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _get_or_create(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get("mlflow.experimentKind") is None:  # made by an older imbadv or by hand
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    try:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    except MlflowException as error:  # another process created it in between
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id
