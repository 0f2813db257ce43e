"""What a study can reuse, and the exact models its evaluations attack.

A training is reused from the study's own finished run of that step, else from the first finished
run of the same training (same config and code: its train key) on the same data, wherever it ran:
the first, so that a later identical training outside the study never changes what it attacks. An
evaluation names the exact registry versions its target and black-box source resolve to (those
its own study's trainings produced or reused), and those versions are part of its reuse key: a
retrained model is attacked afresh, and a model trained later outside the study never is.
"""

from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from imbadv.config import resolve_train_config
from imbadv.study.plan import Step, step_key
from imbadv.study.schedule import Model, model_of, source_model
from imbadv.tracking import names
from imbadv.tracking.provenance import train_key


class ReuseError(RuntimeError):
    """A finished training run registered no model: the store was edited by hand."""


def finished_steps(experiment_id: str) -> dict[str, str]:
    """Step key -> run id of a FINISHED run with that key in the experiment (newest first wins)."""
    found: dict[str, str] = {}
    runs = MlflowClient().search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=50000)
    for run in runs:
        key = run.data.tags.get(names.TAG_STEP_KEY)
        if key is not None:
            found.setdefault(key, run.info.run_id)
    return found


def finished_trainings(steps: list[Step], own: dict[str, str], dataset_digest: str) -> dict[str, str]:
    """Training step key -> run id of the finished training to reuse: the study's own, else the same
    training's first on this data (one search of the store for all steps)."""
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=50000,
                              filter_string=(f"attributes.status = 'FINISHED' and tags.`{names.TAG_JOB}` = 'train' "
                                             f"and tags.`{names.TAG_DATASET_DIGEST}` = '{dataset_digest}'"),
                              order_by=["attributes.start_time ASC"])
    first: dict[str, str] = {}
    for run in runs:
        first.setdefault(run.data.tags.get(names.TAG_TRAIN_KEY, ""), run.info.run_id)
    found = {}
    for step in steps:
        run_id = own.get(step.key) or first.get(train_key(resolve_train_config(**dict(step.options))))
        if run_id is not None:
            found[step.key] = run_id
    return found


def registered_version(run_id: str) -> str:
    """`models:/<name>/<version>` of the model a finished training run registered."""
    versions = MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    if not versions:
        raise ReuseError(f"training run {run_id} is FINISHED but registered no model: delete the run "
                         "(mlflow runs delete) and rerun the study to train it again")
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{newest.name}/{newest.version}"


def attacked_models(step: Step) -> list[Model]:
    """The models an evaluation step needs: its target, then its black-box source if it has one."""
    options = dict(step.options)
    return [model_of(options)] + ([source] if (source := source_model(options)) else [])


def pin_models(step: Step, versions: dict[Model, str], dataset_digest: str, code_version: str) -> Step:
    """The evaluation `step` with the exact versions it attacks in its options and in its reuse key."""
    options: dict[str, Any] = dict(step.options)
    target, *source = attacked_models(step)
    options["target_uri"] = versions[target]
    if source:
        options["source_uri"] = versions[source[0]]
    return Step(step.entry, tuple(sorted(options.items())),
                step_key(step.entry, options, dataset_digest, code_version))
