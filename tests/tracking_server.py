"""A real `mlflow server` for the tests, bound to 127.0.0.1: started, stopped and restarted.

The backend is a fresh PostgreSQL database on the server named by IMBADV_TEST_BACKEND_URI (CI
starts one), else a fresh SQLite file; artifacts are proxied by the server into a folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path

BACKEND_VARIABLE = "IMBADV_TEST_BACKEND_URI"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TrackingServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = folder / "artifacts"
        self.log = folder / "server.log"
        self.process: subprocess.Popen | None = None
        self._admin_uri = os.environ.get(BACKEND_VARIABLE)
        if self._admin_uri:
            self._database = f"imbadv_test_{uuid.uuid4().hex[:8]}"
            self._postgres(f"CREATE DATABASE {self._database}")
            self.backend = self._admin_uri.rsplit("/", 1)[0] + "/" + self._database
        else:
            self._database = None
            self.backend = f"sqlite:///{folder / 'server.db'}"

    @property
    def kind(self) -> str:
        return "postgresql" if self._database else "sqlite"

    def _postgres(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self._admin_uri, autocommit=True) as connection:
            connection.execute(statement)

    def start(self, timeout: float = 120.0) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
                   "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {log_tail}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {timeout:.0f} s: {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its workers
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._database:
            self._postgres(f"DROP DATABASE IF EXISTS {self._database} WITH (FORCE)")
