"""What the jobs of one process share: the work a study's steps would otherwise repeat.

A study worker runs many trainings and evaluations; each is still its own MLflow run with its own
metrics and artifacts, but what they have in common is computed once per process:

- the decoded dataset (the archive's digest and the array cache are read once);
- registered models by pinned version (`models:/<name>/<version>` names immutable weights);
- a target's clean test-set logits and its onnxruntime predictions, shared by its white-box and
  black-box evaluations at every eps;
- the black-box adversarial test set, crafted once per source version and attack settings from
  the balanced model's gradient with the true labels (section 3.2) and scored on every target;
- a model's FGSM gradient pass over the test set (`imbadv.core.gradient_pass`): its sign and
  clean logits serve every eps and direction;
- a model's onnxruntime predictions, keyed by the ONNX file's SHA-256: the training's check
  serves the model's evaluations in the same process;
- the ONNX graph of an architecture: a later model of the same spec swaps its weights into the
  first one's graph instead of tracing it again.

A standalone job gets a fresh `SharedWork` and so computes everything itself, as before.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_PINNED = re.compile(r"^models:/[^@/]+/\d+$")  # a version number, not an alias that may move
# The adversarial sets kept per process: one per (source, eps) in flight; each is the whole test set
# in float32 (10,000 CIFAR-10 images: 123 MB).
MAX_ADVERSARIAL_SETS = 2
# The gradient passes kept per process: every model of two seeds (7.7 MB each for CIFAR-10).
MAX_GRADIENT_PASSES = 42


def is_pinned(uri: str) -> bool:
    """True for `models:/<name>/<version>`: the same weights whenever it is loaded."""
    return bool(_PINNED.match(uri))


@dataclass
class SharedWork:
    """Per-process memo of shared work, by kind and key; `hits` and `misses` count lookups."""

    limits: dict[str, int] = field(default_factory=lambda: {"adversarial": MAX_ADVERSARIAL_SETS,
                                                                "gradient": MAX_GRADIENT_PASSES})
    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    _memo: dict[str, OrderedDict[Hashable, Any]] = field(default_factory=dict)

    def get(self, kind: str, key: Hashable) -> Any | None:
        """The value stored for (kind, key), or None."""
        table = self._memo.get(kind)
        if table is None or key not in table:
            return None
        table.move_to_end(key)
        self.hits[kind] = self.hits.get(kind, 0) + 1
        return table[key]

    def put(self, kind: str, key: Hashable, value: T) -> T:
        table = self._memo.setdefault(kind, OrderedDict())
        table[key] = value
        table.move_to_end(key)
        limit = self.limits.get(kind)
        while limit is not None and len(table) > limit:
            table.popitem(last=False)  # least recently used
        return value

    def get_or_compute(self, kind: str, key: Hashable, compute: Callable[[], T]) -> T:
        """The stored value, else `compute()`, stored."""
        found = self.get(kind, key)
        if found is not None:
            return found
        self.misses[kind] = self.misses.get(kind, 0) + 1
        return self.put(kind, key, compute())


# The memo of a long-lived study worker (set by the worker at start); jobs run outside a study
# get a fresh one per call.
_PROCESS: SharedWork | None = None


def share_in_this_process() -> SharedWork:
    """Make this process's jobs share their work (a study worker calls this once)."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = SharedWork()
    return _PROCESS


def current(shared: SharedWork | None = None) -> SharedWork:
    """`shared`, else this process's memo, else a fresh one (nothing shared)."""
    return shared or _PROCESS or SharedWork()


def load_data(shared: SharedWork, data: str, cache_dir: str) -> Any:
    """The dataset, decoded once per process (keyed by the source file's size and modification time)."""
    import os

    from imbadv.core.data import load_dataset

    try:
        stat = os.stat(os.path.expanduser(data))
        version: tuple = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = ()  # 'cifar10', or a path load_dataset refuses with its own message
    return shared.get_or_compute("dataset", (data, os.path.expanduser(cache_dir), version),
                                 lambda: load_dataset(data, cache_dir))


def load_model(shared: SharedWork, uri: str, device: Any) -> Any:
    """A registered model, loaded once per process when `uri` pins a version (an alias may move)."""
    import mlflow

    from imbadv.tracking.registry import load_registered

    if not is_pinned(uri):
        return load_registered(uri, device)
    return shared.get_or_compute("model", (mlflow.get_registry_uri(), uri, str(device)),
                                 lambda: load_registered(uri, device))


def gradient_key(model_uri: str, attack: Any, precision: str, channels_last: bool, batch_size: int, device: Any,
                 dataset_digest: str) -> tuple:
    """The memo key of a model's FGSM gradient pass over the test set: what the sign depends on
    (`attack`, an AttackConfig: its loss and labels, not its eps or direction) and how it was run."""
    return (model_uri, attack.attack_loss, attack.target_label, precision, channels_last, batch_size, str(device),
            dataset_digest)


def onnx_check_key(onnx_sha256: str, batch_size: int, device: Any, dataset_digest: str) -> tuple:
    """The memo key of an ONNX file's test-set predictions (with the provider that made them)."""
    return (onnx_sha256, batch_size, str(device), dataset_digest)
