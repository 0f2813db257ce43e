"""Whether the process that wrote a run is still alive (a RUNNING run may be an orphan)."""

from __future__ import annotations

import os
import socket

from mlflow.entities import Run

from imbadv.tracking.names import TAG_HOST, TAG_PID


def process_is_gone(run: Run) -> bool:
    """Whether the process that last wrote to `run` has ended (only knowable on the same host)."""
    if run.info.status == "KILLED":
        return True
    if run.data.tags.get(TAG_HOST) != socket.gethostname():
        return False
    try:
        os.kill(int(run.data.tags.get(TAG_PID, "0")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return int(run.data.tags.get(TAG_PID, "0")) <= 0
