"""Stop signals as KeyboardInterrupt, for the commands that own other processes (a study's workers,
the UI's server) and must stop them on the way out. Standard library only."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt as Ctrl-C (SIGINT) does, and Ctrl-C does so even where the
    shell that started the command had SIGINT ignored (a background job of a script), which Python would
    otherwise keep. Outside the main thread (where signals never arrive) nothing changes."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
