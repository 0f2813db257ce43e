"""The post-hoc adjusted target of an evaluation (`--posthoc-tau`, Menon et al. 2021).

The adjusted model is a model of its own: registered as `<target>-posthoc<tau>`, with its own
weights (the target's and the offset), ONNX file and pyfunc. An evaluation finds it in the registry,
or builds it from the target's `train_counts` tag, exports it to ONNX for the cross-check, and
registers it only once the evaluation has succeeded (a failed evaluation registers nothing).
An evaluation that builds an adjustment holds a lock on it (in the cache folder) until it has
registered it, so that the other evaluations of a study on this machine wait and find it rather than
register a second version (steps on other machines of a Ray cluster may each register one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from imbadv.core.data import sha256_file
from imbadv.core.export import export_onnx
from imbadv.core.posthoc import LogitAdjusted, log_priors
from imbadv.jobs.shared import SharedWork, load_model
from imbadv.tracking import names, provenance, registry
from imbadv.tracking.registry import POSTHOC_SPEC_KEY, RegisteredModel, RegistryError

# The target's version tags an adjusted version keeps: what it was trained as and on.
KEPT_TAGS = (names.VERSION_SAMPLING, names.VERSION_CLASS_ID, names.VERSION_CLASS_NAME, names.VERSION_RATIO,
             names.VERSION_LOSS, names.VERSION_RESAMPLE, names.VERSION_TRAIN_COUNTS, names.VERSION_PRESET,
             names.VERSION_SEED, names.VERSION_DATASET, names.VERSION_DATASET_DIGEST)


@dataclass(frozen=True)
class AdjustedTarget:
    """The adjusted model to attack; `files` (weights, spec, ONNX) when it is new and still to register."""

    model: RegisteredModel
    files: dict[str, Path] | None = None


def adjusted_target(base: RegisteredModel, tau: float, device: Any, shared: SharedWork, folder: Path,
                    cache_dir: str, stack: contextlib.ExitStack) -> AdjustedTarget:
    """`base` adjusted post hoc with `tau`: the registered version if there is one, else built in `folder`
    under a lock that `stack` holds until it closes (after `register`)."""
    if (uri := registry.find_posthoc(base, tau)) is not None:
        return AdjustedTarget(load_model(shared, uri, device))
    key = hashlib.sha256(f"{base.name}/{base.version}:{tau:g}".encode()).hexdigest()[:16]
    locks = Path(cache_dir).expanduser() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    stack.enter_context(filelock.FileLock(locks / f"posthoc-{key}.lock"))
    if (uri := registry.find_posthoc(base, tau)) is not None:  # registered while this one waited
        return AdjustedTarget(load_model(shared, uri, device))
    counts = base.tags.get(names.VERSION_TRAIN_COUNTS, "")
    if not counts:
        raise RegistryError(f"{base.uri} has no {names.VERSION_TRAIN_COUNTS} tag, so no training priors to adjust "
                            "with: retrain it with this version of imbadv, or drop --posthoc-tau")
    log_prior = log_priors([int(n) for n in counts.split(",")])
    network = LogitAdjusted(base.network, log_prior, tau).eval()
    spec = {**base.spec, POSTHOC_SPEC_KEY: {"tau": tau, "log_prior": log_prior.tolist(),
                                            "base": f"{base.name}/{base.version}"}}
    files = registry.write_model_files(network, spec, folder)
    export_onnx(network, files["onnx"])
    tags = {**{key: base.tags[key] for key in KEPT_TAGS if key in base.tags},
            names.VERSION_POSTHOC_TAU: f"{tau:g}", names.VERSION_POSTHOC_BASE: f"{base.name}/{base.version}",
            names.VERSION_ONNX_SHA256: sha256_file(files["onnx"]),
            names.VERSION_WEIGHTS_SHA256: sha256_file(files["weights"])}
    name = names.posthoc_model_name(base.name, tau)
    model = RegisteredModel(uri=f"{base.uri}#posthoc{tau:g}", name=name, version="unregistered", tags=tags,
                            spec=spec, network=network.to(device), onnx_path=files["onnx"])
    return AdjustedTarget(model, files)


def register(adjusted: AdjustedTarget, run_id: str) -> RegisteredModel:
    """Register a newly built adjustment from the evaluation run `run_id`, under the target's alias
    (`<preset>-s<seed>`); returns the model with its registered URI and version."""
    model = adjusted.model
    if adjusted.files is None:
        return model
    tags = {**model.tags, names.VERSION_RUN_ID: run_id, names.VERSION_GIT_COMMIT: provenance.git_commit(),
            names.VERSION_CODE_VERSION: provenance.code_version()}
    alias = names.model_alias(tags[names.VERSION_PRESET], int(tags[names.VERSION_SEED]))
    version = registry.log_and_register(adjusted.files, model.name, alias, tags)
    print(f"registered {model.name} version {version.version} (alias {alias})")
    return dataclasses.replace(model, uri=f"models:/{model.name}/{version.version}", version=str(version.version),
                               tags=tags)
