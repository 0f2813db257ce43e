"""Run `imbadv` so that its process SIGKILLs itself at one event of the training job.

    python tests/sigkill_at.py EVENT ARGS...   (ARGS as for `python -m imbadv`)

EVENT is one of
    batch:E:K      as batch K of epoch E starts (both counted from 1): batches 1 to K-1 are done
    metrics:E      once epoch E's metrics are logged, before its checkpoint is
    checkpoint:E   once epoch E's checkpoint is logged
    registered     once the model version exists, before its description and alias are set
    aliased        once the version is registered in full (alias set), before the run ends

The job's own functions are wrapped, not replaced: up to the kill everything runs as in `imbadv`.
The process prints `sigkill_at: EVENT` just before it kills itself; an event that never comes lets the
command end normally, so a test checks for exit status -9. With SIGKILL_AT_SIGNAL=SIGINT in the
environment it sends itself that signal instead: Ctrl-C, which Python raises as KeyboardInterrupt
where the event happens.
"""

from __future__ import annotations

import functools
import inspect
import os
import runpy
import signal
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
SIGNAL_VARIABLE = "SIGKILL_AT_SIGNAL"  # another signal to send instead, by name: SIGINT is Ctrl-C


def command(event: str | None, *args: str) -> list[str]:
    """The command line of `imbadv ARGS`, with the tripwire at `event` (None: plain `python -m imbadv`)."""
    return [sys.executable, "-m", "imbadv", *args] if event is None else [sys.executable, str(HERE), event, *args]


def _die(event: str) -> None:
    print(f"sigkill_at: {event}", flush=True)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.Signals[os.environ.get(SIGNAL_VARIABLE, "SIGKILL")])


def _after(function: Callable, event: str, when: Callable[..., bool] = lambda *a, **k: True) -> Callable:
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        if when(*args, **kwargs):
            _die(event)
        return result
    return wrapper


def _set(event: str) -> None:
    kind, *numbers = event.split(":")
    if kind == "batch":
        from imbadv.core import trainer

        epoch, batch = map(int, numbers)
        where = {"epoch": 0, "batch": 0}
        train_epoch, to_unit = trainer._train_epoch, trainer.to_unit

        signature = inspect.signature(train_epoch)

        @functools.wraps(train_epoch)
        def counted_epoch(*args, **kwargs):
            where.update(epoch=signature.bind(*args, **kwargs).arguments["epoch"] + 1, batch=0)
            return train_epoch(*args, **kwargs)

        @functools.wraps(to_unit)
        def counted_batch(images):  # the first thing each batch of an epoch does
            where["batch"] += 1
            if (where["epoch"], where["batch"]) == (epoch, batch):
                _die(event)
            return to_unit(images)

        trainer._train_epoch, trainer.to_unit = counted_epoch, counted_batch
    elif kind in ("metrics", "checkpoint"):
        from imbadv.jobs import train

        (epoch,) = map(int, numbers)
        save = train._save_checkpoint

        @functools.wraps(save)
        def checkpoint(state: dict) -> None:
            if kind == "metrics" and state["epochs_done"] == epoch:
                _die(event)
            save(state)
            if kind == "checkpoint" and state["epochs_done"] == epoch:
                _die(event)

        train._save_checkpoint = checkpoint
    elif kind == "registered":
        import mlflow

        mlflow.register_model = _after(mlflow.register_model, event)
    elif kind == "aliased":
        from imbadv.tracking import registry

        registry.log_and_register = _after(registry.log_and_register, event)
    else:
        raise SystemExit(f"sigkill_at: unknown event {event!r}")


if __name__ == "__main__":
    _set(sys.argv[1])
    sys.argv = ["imbadv", *sys.argv[2:]]
    runpy.run_module("imbadv", run_name="__main__", alter_sys=True)
