"""`imbadv ui`: the MLflow UI on the project's store, opened on the imbadv experiment's runs.

The slow test loads the printed URL in headless Chromium and finds the runs there: MLflow 3.17 opens
an experiment on its GenAI "Overview" instead (mlflow/mlflow#24498).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from tracking_server import free_port
from typer.testing import CliRunner

from imbadv.cli import app
from imbadv.tracking import store as tracking_store
from imbadv.tracking import ui
from imbadv.tracking.names import EXPERIMENT

QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # no traffic beyond 127.0.0.1


def test_the_url_opens_the_stores_imbadv_experiment_on_its_runs(store):
    assert ui.experiment_url("http://127.0.0.1:5000") == ("http://127.0.0.1:5000/#/experiments", False)
    tracking_store.prepare("another")  # an experiment id the imbadv one must not take
    experiment_id = tracking_store.prepare(EXPERIMENT)
    assert experiment_id != MlflowClient().get_experiment_by_name("another").experiment_id
    assert ui.experiment_url("http://127.0.0.1:5000") == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs", True)


def test_a_wildcard_host_is_browsed_on_this_machine():
    assert ui.base_url("0.0.0.0", 5001) == "http://127.0.0.1:5001"
    assert ui.base_url("::1", 5001) == "http://[::1]:5001"
    assert ui.base_url("127.0.0.1", 5001) == "http://127.0.0.1:5001"


def test_the_server_runs_on_the_jobs_store_with_their_artifact_root(store):
    command = ui.server_command("127.0.0.1", 5001)
    assert command[command.index("--backend-store-uri") + 1] == store
    assert command[command.index("--registry-store-uri") + 1] == store
    assert command[command.index("--default-artifact-root") + 1] == str(Path.cwd() / "mlruns")


def test_a_taken_port_is_one_error_line(store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--port", str(port)])
    assert result.exit_code == 1
    assert result.output == f"imbadv: error: port {port} on 127.0.0.1 is taken (another MLflow UI?): stop it or " \
                            f"pass --port {port + 1}\n"


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@pytest.fixture
def start_ui(store, tmp_path):
    """Start `imbadv ui` on a free port of 127.0.0.1; stopped at the end with Ctrl-C's SIGINT (SIGKILL if
    that fails, with the server it started), also on failure."""
    started: list[SimpleNamespace] = []

    def start() -> SimpleNamespace:
        port = free_port()
        log = tmp_path / "ui.log"
        with log.open("w") as server_output:
            process = subprocess.Popen([sys.executable, "-m", "imbadv", "ui", "--port", str(port)], text=True,
                                       stdout=subprocess.PIPE, stderr=server_output, env={**os.environ, **QUIET},
                                       start_new_session=True)
        started.append(SimpleNamespace(process=process, port=port, log=log, servers=[]))
        return started[-1]

    try:
        yield start
    finally:
        for running in started:
            process = running.process
            running.servers += _children(process.pid)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            for pid in running.servers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            process.stdout.close()


def _printed_url(running: SimpleNamespace) -> str:
    """The URL `imbadv ui` prints once its server answers (it exits, ending its output, if the server fails)."""
    for line in running.process.stdout:
        if line.startswith("http://"):
            return line.strip()
    raise AssertionError(f"imbadv ui printed no URL: {running.log.read_text()[-3000:]}")


def _dump_dom(url: str, profile: Path) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed for the UI test: apt-get install chromium (.ci/run does)"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
                            capture_output=True, text=True, timeout=180)
    return result.stdout


def _server_is_gone(port: int, servers: list[int]) -> bool:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    return not any(ui.group_alive(pid) for pid in servers)


@pytest.mark.slow
def test_the_printed_url_shows_the_runs_in_a_browser_and_ctrl_c_stops_the_server(
        store, small_data, session_cache, start_ui, tmp_path, monkeypatch):
    from imbadv.jobs.train import run_train

    for name, value in QUIET.items():
        monkeypatch.setenv(name, value)
    outcomes = [run_train(preset="smoke", data=str(small_data), cache_dir=str(session_cache), device="cpu",
                          sampling=sampling, class_id=class_id) for sampling, class_id in (("balanced", None),
                                                                                          ("under", 3))]
    client = MlflowClient()
    run_names = [client.get_run(outcome.run_id).info.run_name for outcome in outcomes]
    assert run_names == ["train-balanced-smoke-s0", "train-under-c3-smoke-s0"]

    running_ui = start_ui()
    url = _printed_url(running_ui)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert url == f"http://127.0.0.1:{running_ui.port}/#/experiments/{experiment_id}/runs"
    running_ui.servers += _children(running_ui.process.pid)

    deadline = time.monotonic() + 300  # a safety net: the page loads in seconds
    while not all(name in (dom := _dump_dom(url, tmp_path / "chromium")) for name in run_names):
        assert time.monotonic() < deadline, f"the runs page does not name the runs: {dom[-3000:]}"
    assert re.search(r"<title>[^<]*MLflow", dom), dom[:2000]

    running_ui.process.send_signal(signal.SIGINT)  # Ctrl-C
    assert running_ui.process.wait(timeout=60) == 0, running_ui.log.read_text()[-3000:]
    assert "stopping the MLflow UI" in running_ui.process.stdout.read()
    assert _server_is_gone(running_ui.port, running_ui.servers)
