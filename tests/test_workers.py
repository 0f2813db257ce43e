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
def test_a_shared_worker_ends_after_the_exit_handlers_its_steps_registered(small_data, session_cache, tmp_path):
    mark = tmp_path / "exit-handler-ran"
    config = StudyConfig(preset="smoke", data=str(small_data), cache_dir=str(session_cache), jobs=1, device="cpu")
    with workers.start(config) as pool:
        pid = pool.submit(_leave_a_mark, str(mark)).result()
    assert pid != os.getpid() and mark.read_text() == "ran"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
def test_workers_keep_freed_memory_where_the_c_library_is_glibc():
    assert workers.keep_freed_memory() is True
