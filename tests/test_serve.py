"""A registered model served the MLflow way answers the README's HTTP request of uint8 images.

The README's "Serve" section is run as written, on 127.0.0.1, with this test's model URI and a free
port: `mlflow models serve ... --env-manager local`, the one-line Python that writes request.json,
and the `curl` that posts it to /invocations.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from tracking_server import free_port

from imbadv.core.data import load_dataset
from imbadv.tracking.pyfunc_model import CLASS_COLUMN, INDEX_COLUMN, probability_columns

README = Path(__file__).resolve().parents[1] / "README.md"
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # no traffic beyond 127.0.0.1


def readme_serving_commands() -> tuple[list[str], list[str], list[str]]:
    """The serve, request-writing and curl commands of the README's "Serve" section, as argument lists."""
    section = re.search(r"^## [^\n]*Serve[^\n]*\n(.*?)(?=^## |\Z)", README.read_text(), re.M | re.S)
    assert section, "README.md has no section whose heading names Serve"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the README's Serve section has no ```bash block"
    commands = [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]
    assert [c[0] for c in commands] == ["mlflow", "python", "curl"], block.group(1)
    return commands[0], commands[1], commands[2]


def test_the_readme_serves_a_registered_model_locally_and_posts_json():
    serve, write_request, curl = readme_serving_commands()
    assert serve[:3] == ["mlflow", "models", "serve"] and "--env-manager" in serve and "--port" in serve
    assert serve[serve.index("-m") + 1].startswith("models:/")
    assert write_request[1] == "-c" and "request.json" in write_request[2]
    assert "@request.json" in curl and f"127.0.0.1:{serve[serve.index('--port') + 1]}/invocations" in " ".join(curl)


@pytest.fixture
def start_server():
    """Start a command in a process group of its own; the whole group is killed at the end, also on failure."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], log: Path) -> subprocess.Popen:
        with log.open("w") as output:
            started.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                            env={**os.environ, **QUIET}, start_new_session=True))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_ping(server: subprocess.Popen, port: int, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout  # a safety net: the server answers in seconds
    while True:
        assert server.poll() is None, f"mlflow models serve exited with {server.returncode}: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"/ping did not answer in {timeout:.0f} s: {log.read_text()[-3000:]}"
        time.sleep(0.2)  # poll the server's readiness


@pytest.mark.slow
def test_a_served_model_answers_the_readme_request_with_class_names(store, small_data, session_cache, start_server,
                                                                     tmp_path, monkeypatch):
    from imbadv.jobs.train import run_train

    for name, value in QUIET.items():
        monkeypatch.setenv(name, value)
    outcome = run_train(preset="smoke", data=str(small_data), cache_dir=str(session_cache), device="cpu")
    uri = f"models:/{outcome.model_name}/{outcome.version}"
    class_names = list(load_dataset(str(small_data), session_cache).class_names)

    serve, write_request, curl = readme_serving_commands()
    readme_uri, readme_port = serve[serve.index("-m") + 1], serve[serve.index("--port") + 1]
    port = str(free_port())
    command = [sys.executable, "-m", "mlflow", *serve[1:]]  # `mlflow` of this environment
    command[command.index(readme_uri)], command[command.index(readme_port)] = uri, port
    server = start_server(command, tmp_path / "serve.log")

    subprocess.run([sys.executable, *write_request[1:]], cwd=tmp_path, check=True, timeout=120)
    images = np.asarray(json.loads((tmp_path / "request.json").read_text())["inputs"])
    assert images.shape[1:] == (32, 32, 3) and images.min() >= 0 and images.max() <= 255

    _wait_for_ping(server, int(port), tmp_path / "serve.log")
    curl_path = shutil.which("curl")
    assert curl_path, "curl is needed for the serving test: apt-get install curl"
    posted = [curl_path, *(arg.replace(f"127.0.0.1:{readme_port}/", f"127.0.0.1:{port}/") for arg in curl[1:])]
    answer = subprocess.run([*posted, "--fail-with-body"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert answer.returncode == 0, answer.stdout + answer.stderr

    predictions = pd.DataFrame(json.loads(answer.stdout)["predictions"])
    probabilities = probability_columns(class_names)
    assert list(predictions.columns) == [CLASS_COLUMN, INDEX_COLUMN, *probabilities]
    assert len(predictions) == len(images)  # one row per image
    assert set(predictions[CLASS_COLUMN]) <= set(class_names)
    assert np.allclose(predictions[probabilities].sum(axis=1), 1.0)
    expected = mlflow.pyfunc.load_model(uri).predict(images.astype(np.uint8))  # what the model says in-process
    assert predictions[CLASS_COLUMN].tolist() == expected[CLASS_COLUMN].tolist()
    np.testing.assert_allclose(predictions[probabilities].to_numpy(), expected[probabilities].to_numpy(), atol=1e-6)
