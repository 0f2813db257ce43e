"""The whole study (paper section 4): 21 models per seed and their 41 attack evaluations per eps.

Each step is its own MLflow run nested under one parent run. A step whose entry point, options,
dataset digest and code version match a FINISHED run is reused, so an interrupted study rerun
with the same command does only what is missing. The engine sets the study up once (its plan,
parent run, finished steps and reused trainings) and hands the rest to an executor from
`EXECUTORS`: local worker processes (`imbadv.study.local_executor`) or a Ray cluster
(`imbadv.study.ray_executor`). Both run the same steps (`imbadv.study.runner`) to the same results.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType

import mlflow
from mlflow.tracking import MlflowClient

from imbadv.core.data import load_dataset
from imbadv.study import local_executor, ray_executor, reuse
from imbadv.study.config import StudyConfig
from imbadv.study.plan import Step, plan, step_key
from imbadv.study.runner import StepContext, StudyOutcome, StudyRun
from imbadv.study.schedule import Model, model_of
from imbadv.tracking import lifecycle, log, names, provenance, store

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

# Where a study's steps run. Each executor module has `prepare(config)` (check, before any run
# exists, that it can run the study), `threads(config)` (torch threads per step) and
# `drive(study, pool)` (run the steps of `study.todo`, recording each in `study.outcome`).
EXECUTORS: dict[str, ModuleType] = {"local": local_executor, "ray": ray_executor}


class StudyFailed(RuntimeError):
    """Some steps of a study failed; the finished ones are kept for the rerun."""


def run_study(config: StudyConfig, pool: ProcessPoolExecutor | None = None) -> StudyOutcome:
    """Run (or complete) a study and return what ran, what was reused and what failed.

    `pool`: the local executor's workers, when the caller started them (`imbadv.study.workers.start`).
    """
    start = time.monotonic()
    executor = EXECUTORS[config.executor]
    executor.prepare(config)  # an executor that cannot run the study stops it before any run exists
    dataset = load_dataset(config.data, config.cache_dir)
    code_versions = provenance.code_versions()
    steps = plan(config, dataset.num_classes, dataset.digest, code_versions, dataset.class_names)
    # any engine, executor or code version completes the same study (its steps' keys hold their code)
    study_key = step_key("study", config.identity, dataset.digest, "")
    with _exclusive(Path(config.cache_dir).expanduser() / "locks" / f"study-{study_key}.lock"), \
            _parent_run(config, dataset.name, dataset.digest, study_key) as parent:
        study = _set_up(config, steps, dataset.digest, code_versions, parent, executor.threads(config))
        executor.drive(study, pool)
        study.outcome.seconds = time.monotonic() - start
        log.metrics({names.STEPS_TOTAL: len(steps), names.STEPS_REUSED: len(study.outcome.reused),
                     names.STEPS_RAN: len(study.outcome.ran), names.STEPS_FAILED: len(study.outcome.failed)})
        if study.outcome.failed:
            raise StudyFailed(f"{len(study.outcome.failed)} study steps failed, first: {study.outcome.failed[0]}; "
                              "rerun the same command to complete the rest")
    return study.outcome


def _set_up(config: StudyConfig, steps: list[Step], dataset_digest: str, code_versions: dict[str, str],
            parent: mlflow.ActiveRun, threads: int) -> StudyRun:
    """The study's shared start for any executor: finished steps, reused trainings and their versions."""
    log_dir = Path(config.cache_dir).expanduser() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    experiment_id = parent.info.experiment_id
    context = StepContext(parent.info.run_id, experiment_id, config.cache_dir, config.device, str(log_dir), threads,
                          config.engine, config.executor)
    finished = {} if config.force else reuse.finished_steps(experiment_id)
    trainings = [s for s in steps if s.entry == "train"]
    reusable = {} if config.force else reuse.finished_trainings(trainings, finished, dataset_digest)
    outcome = StudyOutcome(parent.info.run_id, [], [], [], 0.0)
    versions: dict[Model, str] = {}
    for step in steps:
        if step.key in reusable:
            versions[model_of(dict(step.options))] = reuse.registered_version(reusable[step.key])
            outcome.reused.append(step.label)
    todo = []
    for step in (s for s in steps if s.key not in reusable):
        # an evaluation of reused models is known reused now, not once the new trainings are handed out,
        # so that progress counts it from the start (a sweep widening an earlier one reuses most of them)
        if step.entry == "evaluate" and all(m in versions for m in reuse.attacked_models(step)):
            pinned = reuse.pin_models(step, versions, dataset_digest, code_versions["evaluate"])
            if pinned.key in finished:
                outcome.reused.append(pinned.label)
                continue
        todo.append(step)
    return StudyRun(config, steps, dataset_digest, code_versions, context, finished, versions, todo, outcome)


@contextlib.contextmanager
def _parent_run(config: StudyConfig, dataset_name: str, dataset_digest: str,
                study_key: str) -> Iterator[mlflow.ActiveRun]:
    """Open (or reopen) the study's parent run, with its tags and, the first time, its params."""
    under_project = bool(os.environ.get("MLFLOW_RUN_ID"))  # `mlflow run` made the study's run
    store.prepare(None if under_project else names.EXPERIMENT)
    parent_id = None if under_project else _existing_parent(study_key)
    with lifecycle.open_run(parent_id, f"{config.kind}-{dataset_name}-{config.preset}") as parent:
        log.tags({names.TAG_JOB: "study", names.TAG_STUDY_KEY: study_key, names.TAG_ENGINE: config.engine,
                  names.TAG_EXECUTOR: config.executor, **provenance.provenance_tags(), names.TAG_DATASET: dataset_name,
                  names.TAG_DATASET_DIGEST: dataset_digest})
        if parent_id is None:
            log.params({names.CONFIG_PARAM_PREFIX + k: str(v) for k, v in config.identity.items()})
        try:
            yield parent
        except KeyboardInterrupt:  # stopped, not failed: the same command continues it
            lifecycle.end_stopped()
            raise


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Refuse to run two identical studies at once on this machine (they would duplicate steps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StudyFailed("another study (or sweep) with the same settings is running on this machine: "
                                  f"wait for it to finish or stop it (lock {path})") from None
        yield


def _existing_parent(study_key: str) -> str | None:
    experiment = mlflow.get_experiment_by_name(names.EXPERIMENT)
    if experiment is None:
        return None
    runs = MlflowClient().search_runs([experiment.experiment_id],
                                      filter_string=f"tags.`{names.TAG_STUDY_KEY}` = '{study_key}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
