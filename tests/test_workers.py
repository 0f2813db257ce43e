"""A study's long-lived worker processes: how they keep memory and how they end."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

from imbadv.study.config import StudyConfig
from imbadv.study import workers


@pytest.fixture(scope="session")
def small_data(synthetic_data):
    """These tests check the plumbing, not accuracy: synthetic images, no CIFAR-10 archive needed."""
    return synthetic_data


def _leave_a_mark(path: str) -> int:
    """A step's own exit handler, registered after the worker started (as MLflow's and torch's are)."""
    atexit.register(Path(path).write_text, "ran")
    return os.getpid()


@pytest.mark.slow
def test_a_shared_worker_ends_after_the_exit_handlers_its_steps_registered(store, small_data, session_cache,
                                                                           tmp_path):
    mark = tmp_path / "exit-handler-ran"
    config = StudyConfig(preset="smoke", data=str(small_data), cache_dir=str(session_cache), jobs=1, device="cpu")
    with workers.start(config) as pool:
        pid = pool.submit(_leave_a_mark, str(mark)).result()
    assert pid != os.getpid() and mark.read_text() == "ran"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
def test_workers_keep_freed_memory_where_the_c_library_is_glibc():
    assert workers.keep_freed_memory() is True


_STUDY_THAT_HANGS = """
import sys, time
from imbadv.study import workers
from imbadv.study.config import StudyConfig

def pid():
    import os
    return os.getpid()

if __name__ == "__main__":
    config = StudyConfig(preset="smoke", engine=sys.argv[1], jobs=1, device="cpu", data=sys.argv[2],
                         cache_dir=sys.argv[3])
    with workers.start(config) as pool:
        print(pool.submit(pid).result(), flush=True)
        time.sleep(3600)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("engine", ["isolated", "shared"])
def test_a_worker_ends_when_its_study_is_killed_outright(engine, store, small_data, session_cache, tmp_path):
    # SIGKILL leaves the study no chance to stop its workers (as a stop signal arriving while a worker is
    # being started leaves it no record of that worker): the worker must end by itself. `store`: a shared
    # worker opens the tracking store, which must not land in the working tree
    import signal
    import subprocess
    import time

    script = tmp_path / "study.py"
    script.write_text(_STUDY_THAT_HANGS)
    study = subprocess.Popen([sys.executable, str(script), engine, str(small_data), str(session_cache)],
                             stdout=subprocess.PIPE, text=True)
    try:
        worker = int(study.stdout.readline())
        assert worker != study.pid and _alive(worker)
        study.send_signal(signal.SIGKILL)
        study.wait()
        deadline = time.monotonic() + 300  # a safety net against a hang, not a pace
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        study.kill()
        study.wait()
