"""The study's worker processes, started before the parent loads MLflow and PyTorch.

This module imports only the standard library (and `imbadv.interrupt`, which does too), so
`imbadv reproduce` starts the workers first and they import, open the store and decode the data
while the parent imports and plans (the shared engine; an isolated-engine worker does all of that
in its first step).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TYPE_CHECKING

from imbadv.interrupt import stop_signals_interrupt

if TYPE_CHECKING:
    from imbadv.study.config import StudyConfig


def threads(config: StudyConfig) -> int:
    """Torch threads per step: the cores shared out between the jobs."""
    return max(1, (os.cpu_count() or 1) // config.jobs)


@contextlib.contextmanager
def start(config: StudyConfig) -> Iterator[ProcessPoolExecutor]:
    """The study's `config.jobs` worker processes; the shared engine's start at once.

    Ctrl-C or SIGTERM to this process (or any error in it) stops the workers with it (`stop`): no
    worker outlives the study to go on training in the background.
    """
    shared = config.engine == "shared"
    study = os.getpid()
    setup = ((_start_worker, (study, threads(config), config.data, config.cache_dir)) if shared
             else (_guard_worker, (study,)))
    with stop_signals_interrupt():
        pool = ProcessPoolExecutor(max_workers=config.jobs, mp_context=get_context("spawn"), initializer=setup[0],
                                   initargs=setup[1])
        try:
            if shared:
                for _ in range(config.jobs):
                    pool.submit(_warm)
            yield pool
        except BaseException:
            stop(pool)
            raise
        finally:
            pool.shutdown(wait=True)


def stop(pool: ProcessPoolExecutor) -> None:
    """Kill the workers at once, wherever their steps are: a step interrupted inside its MLflow or
    PyTorch calls could leave a lock held, while a killed process holds nothing. Their runs stay
    RUNNING until the study marks them KILLED (`imbadv.study.local_executor`); a killed training
    resumes from its last checkpoint when the study runs again. Idempotent."""
    processes = list((pool._processes or {}).values())  # the executor offers no public list
    manager = pool._executor_manager_thread  # ends once its workers have, closing the queues
    for process in processes:
        process.kill()
    for process in processes:
        process.join()
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join()


def _guard_worker(study: int) -> None:
    """Worker start (every engine; all of it on the isolated engine, whose steps import and load what they
    need): end with the study's process, and leave Ctrl-C to it. Ctrl-C reaches the whole process group,
    but only the study's process acts on it, by stopping the workers (`stop`)."""
    _die_with(study)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(study: int) -> None:
    """End this worker when the study's process `study` ends, however it ends: killed with SIGKILL, or
    stopped by a signal that came while it was starting this worker, before `stop` could know of it.
    An orphaned worker would otherwise wait on its task queue for ever (it holds both ends of the
    queue's pipe), and hold the study's output pipe open. Linux: the kernel's parent-death signal;
    elsewhere, a thread that checks the parent once a second."""
    try:
        registered = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        registered = False
    if os.getppid() != study:  # the study ended before the signal was registered
        os._exit(1)
    if not registered:
        threading.Thread(target=_watch_parent, args=(study,), daemon=True, name="imbadv-parent-watch").start()


def _watch_parent(study: int) -> None:
    while os.getppid() == study:
        time.sleep(1.0)
    os._exit(1)


def _start_worker(study: int, threads: int, data: str, cache_dir: str) -> None:
    """Shared-engine worker start: imports, threads, the store and the data, once for all its steps."""
    _guard_worker(study)
    atexit.register(_exit_without_teardown)  # before the imports: runs after the handlers they register
    import torch

    from imbadv.jobs import evaluate, train  # noqa: F401  (imported once, before the first step)
    from imbadv.jobs.shared import load_data, share_in_this_process
    from imbadv.tracking import store

    os.environ.pop("MLFLOW_RUN_ID", None)
    keep_freed_memory()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as every training sets it
    store.prepare()
    load_data(share_in_this_process(), data, cache_dir)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve blocks up to 32 MB (its largest mmap threshold) from the heap and keep
    freed heap memory for the next allocation rather than return it to the system.

    A worker allocates and frees the same activation-sized tensors batch after batch; by default
    glibc maps many of them afresh or trims them from the heap, and every reuse faults in new zeroed
    pages. The heap then stays at the worker's peak instead. False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))


def _exit_without_teardown() -> None:
    """A shared-engine worker's last exit handler: end the process once the exit handlers of torch,
    MLflow and the rest have run, without tearing down every module and object one by one (about
    2 s with what a worker holds, on the 2-core CPU); the system frees the memory at once. Every
    step's run is ended, its log file closed and its result sent by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warm() -> None:
    """A no-op task: submitting one per worker starts the workers before the first step is ready."""
