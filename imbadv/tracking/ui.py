"""`imbadv ui`: the MLflow UI on imbadv's tracking store, opened on the imbadv experiment's runs.

MLflow 3.17 opens an experiment in a fresh browser on the GenAI "Overview" of traces, whatever the
experiment's kind, because the sidebar's GenAI / model-training switch lives in the browser's local
storage (mlflow/mlflow#24498); the URL `#/experiments/<id>/runs` opens the runs. The server is
`mlflow server` (what `mlflow ui` runs) on the store imbadv's jobs write to: MLFLOW_TRACKING_URI,
else MLflow's default (sqlite:///mlflow.db), with new experiments' artifacts under ./mlruns as the
jobs' are. A tracking server (an http(s) URI) serves its own UI: its URL is printed, nothing starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
from mlflow.tracking import MlflowClient

from imbadv.interrupt import stop_signals_interrupt
from imbadv.tracking import store
from imbadv.tracking.names import EXPERIMENT

DEFAULT_PORT = 5000  # mlflow ui's
DEFAULT_HOST = "127.0.0.1"  # this machine only, as mlflow ui
START_SECONDS = 180.0  # a safety net: the server answers in seconds, slower on a busy 2-core machine
STOP_SECONDS = 30.0  # after SIGTERM, then SIGKILL
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class UiError(RuntimeError):
    """The UI cannot start: the port is taken, or the server exited before answering."""


def base_url(host: str, port: int) -> str:
    """The address a browser on this machine opens: `http://HOST:PORT` (a wildcard host as 127.0.0.1)."""
    host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def experiment_url(base: str) -> tuple[str, bool]:
    """The imbadv experiment's runs page under `base`, read from the tracking store, and True; or the
    experiments page and False while the store has no imbadv experiment."""
    found = store.call(MlflowClient().get_experiment_by_name, EXPERIMENT)
    if found is None:
        return f"{base}/#/experiments", False
    return f"{base}/#/experiments/{found.experiment_id}/runs", True


def check_port_free(host: str, port: int) -> None:
    """Raise UiError unless the server could listen on (host, port) now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closed port's TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UiError(f"port {port} on {host} is taken (another MLflow UI?): stop it or pass "
                              f"--port {port + 1}") from None
            raise UiError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def server_command(host: str, port: int) -> list[str]:
    """`mlflow server` on the tracking store and registry the jobs use, one worker (one local user)."""
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking,
               "--registry-store-uri", registry, "--host", host, "--port", str(port), "--workers", "1"]
    if store.sqlite_path(tracking) is not None:  # the jobs' local default: new experiments' artifacts in ./mlruns
        command += ["--default-artifact-root", os.path.abspath(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)]
    return command


def _wait_until_answering(server: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UiError(f"mlflow server exited with code {server.returncode} before answering (its output "
                          "is above)")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)  # poll the server's readiness, not a guess at its start time
    raise UiError(f"mlflow server did not answer on {base} within {START_SECONDS:.0f} s")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the mlflow command and uvicorn under it); SIGKILL what is left
    after STOP_SECONDS."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=STOP_SECONDS)
    while group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # uvicorn, reparented when the mlflow command ends, finishes its shutdown
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. A zombie does not count: uvicorn, reparented when the
    mlflow command ends, may stay one until the machine's init reaps it."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: reparented zombies get reaped
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # the process ended while being read
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if group == str(pgid) and state != "Z":
                return True
    return False


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, open_browser: bool = False,
          echo: Callable[[str], None] = print) -> None:
    """Run the MLflow UI on the tracking store until Ctrl-C (or SIGTERM), after echoing the URL of the
    imbadv experiment's runs once the server answers (and opening it in a browser with `open_browser`)."""
    tracking = mlflow.get_tracking_uri()
    if tracking.startswith(("http://", "https://")):
        store.prepare()  # fails in one line when the server does not answer
        url, found = experiment_url(tracking.rstrip("/"))
        _announce(f"the tracking server {tracking} serves the UI itself", url, found, open_browser, echo)
        return
    check_port_free(host, port)
    store.prepare()  # creates or migrates the schema under the store's lock, as a job would
    base = base_url(host, port)
    # A session of its own: a terminal's Ctrl-C reaches imbadv alone, which stops the whole server.
    server = subprocess.Popen(server_command(host, port), stdout=sys.stderr, start_new_session=True)
    try:
        with stop_signals_interrupt():
            _wait_until_answering(server, base)
            url, found = experiment_url(base)
            _announce(f"MLflow UI on {tracking} (Ctrl-C stops it)", url, found, open_browser, echo)
            code = server.wait()
            if code != 0:
                raise UiError(f"mlflow server exited with code {code} (its output is above)")
    except KeyboardInterrupt:
        echo("stopping the MLflow UI")
    finally:
        _stop(server)


def _announce(context: str, url: str, found: bool, open_browser: bool, echo: Callable[[str], None]) -> None:
    if found:
        echo(f"{context}; the {EXPERIMENT} experiment's runs:")
    else:
        echo(f"{context}; the store has no {EXPERIMENT} experiment yet (train a model first), so the experiments:")
    echo(url)
    if open_browser:
        webbrowser.open(url)
