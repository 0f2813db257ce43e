"""Running a study's steps inside a worker process, whichever executor started the worker.

A task is one step, a target's evaluations together, or a group of trainings side by side. Each
step is its own MLflow run, nested under the study's run, with its output in a log file of its
own. An executor (`imbadv.study.local_executor`, `imbadv.study.ray_executor`) decides where tasks
run; this module is what they run.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from imbadv.config import first_line
from imbadv.study import reuse
from imbadv.study.config import StudyConfig
from imbadv.study.plan import Step
from imbadv.study.schedule import Model, model_of
from imbadv.tracking import lifecycle, names

# (step key, run id, error): one finished step of a task; run id None when it failed
StepResult = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class StepContext:
    """Where a study's steps log and how they run: the same for every step of the study."""

    parent_run_id: str
    experiment_id: str
    cache_dir: str
    device: str
    log_dir: str
    threads: int  # torch threads per step
    engine: str  # shared or isolated
    executor: str  # local or ray


@dataclass(frozen=True)
class Task:
    """What one worker call runs: one step, one target's evaluations, or trainings side by side."""

    steps: tuple[Step, ...]


def run_task(task: Task, context: StepContext) -> list[StepResult]:
    """Worker: run a task's steps; a failed step is reported in its result, the others go on."""
    if task.steps[0].entry == "evaluate":
        return _run_evaluations(list(task.steps), context)
    if len(task.steps) > 1:
        return _run_training_group(list(task.steps), context)
    step = task.steps[0]
    try:
        return [(step.key, run_step(step, context), None)]
    except Exception as error:  # the step's run is FAILED
        return [(step.key, None, first_line(error))]


def run_step(step: Step, context: StepContext, tags: dict[str, str] | None = None, **job_options: Any) -> str:
    """Worker: run one step in this process, output to its log file; returns the step's run id.

    `tags` go on the step's run beside the engine and the executor."""
    _step_environment(context)
    log_path = Path(context.log_dir) / f"{step.key}.log"
    with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
            lifecycle.step_tags(context.parent_run_id, step.key, _tags(context, tags)):
        return _job(step)(**dict(step.options), cache_dir=context.cache_dir, device=context.device,
                          **job_options).run_id


def _job(step: Step) -> Any:
    from imbadv.jobs.evaluate import run_evaluate
    from imbadv.jobs.train import run_train

    return run_train if step.entry == "train" else run_evaluate


def _tags(context: StepContext, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {names.TAG_ENGINE: context.engine, names.TAG_EXECUTOR: context.executor, **(extra or {})}


def _step_environment(context: StepContext) -> None:
    """Steps log under the study's experiment, with the study's share of the cores."""
    import torch

    os.environ.pop("MLFLOW_RUN_ID", None)  # the study's own run, when started by `mlflow run`
    os.environ["MLFLOW_EXPERIMENT_ID"] = context.experiment_id  # steps go where their parent is
    torch.set_num_threads(context.threads)


def _run_training_group(steps: list[Step], context: StepContext) -> list[StepResult]:
    """Trainings side by side (`imbadv.core.group`), each its own run in its own thread. They log to
    one file, linked under every step's key."""
    from imbadv.core.group import TrainingGroup
    from imbadv.jobs.train import run_train

    _step_environment(context)
    group = TrainingGroup(len(steps))
    results: list[StepResult] = [(s.key, None, "did not run") for s in steps]

    def member(index: int, step: Step) -> None:
        try:
            with lifecycle.step_tags(context.parent_run_id, step.key, _tags(context)):
                run = run_train(**dict(step.options), cache_dir=context.cache_dir, device=context.device,
                                group=group)
            results[index] = (step.key, run.run_id, None)
        except Exception as error:  # this model's run is FAILED; the others go on
            results[index] = (step.key, None, first_line(error))
        finally:
            group.release()

    log_path = Path(context.log_dir) / f"{steps[0].key}.log"
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(member, i, s), name=s.label)
                   for i, s in enumerate(steps)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for step in steps[1:]:
        linked = Path(context.log_dir) / f"{step.key}.log"
        linked.unlink(missing_ok=True)
        os.link(log_path, linked)
    return results


def _run_evaluations(steps: list[Step], context: StepContext) -> list[StepResult]:
    """The evaluations of one target, each its own run. White-box ones go first at each eps, so
    black-box ones find the target's clean pass computed (shared engine)."""
    results: list[StepResult] = []
    for step in sorted(steps, key=lambda s: (dict(s.options)["eps"], dict(s.options)["source"] != "self")):
        try:
            results.append((step.key, run_step(step, context), None))
        except Exception as error:  # the step's run is FAILED; the other evaluations go on
            results.append((step.key, None, first_line(error)))
    return results


def discard_unfinished(experiment_id: str, step: Step) -> None:
    """Delete the runs an earlier attempt at this step left unfinished, so no duplicates remain.

    A killed training (RUNNING or KILLED) is kept: the train job resumes it from its checkpoint.
    """
    client = MlflowClient()
    keep = ("RUNNING", "KILLED") if step.entry == "train" else ()
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{names.TAG_STEP_KEY}` = '{step.key}' "
                                  "and attributes.status != 'FINISHED'"):
        resumable = run.info.status in keep and names.TAG_TRAIN_KEY in run.data.tags  # killed before its key
        if not resumable:
            lifecycle.delete_run(run.info.run_id)


@dataclass
class StudyOutcome:
    parent_run_id: str
    ran: list[str]
    reused: list[str]
    failed: list[str]
    seconds: float


@dataclass
class StudyRun:
    """What every executor starts from, set up once by the engine: the study's steps, the finished
    runs it reuses, the registered versions of its trained models, and where its steps log."""

    config: StudyConfig
    steps: list[Step]
    dataset_digest: str
    code_versions: dict[str, str]  # by entry point: what its steps' reuse keys hash
    context: StepContext
    finished: dict[str, str]  # step key -> run id of a FINISHED run with that key
    versions: dict[Model, str]  # the study's models (`imbadv.study.schedule.Model`) -> models:/<name>/<version>
    todo: list[Step]  # steps that no finished run covers (an evaluation of new models is checked once pinned)
    outcome: StudyOutcome

    def pin(self, step: Step, versions: dict[Model, str] | None = None) -> Step:
        """The evaluation `step` pinned to the exact versions of the models it attacks."""
        return reuse.pin_models(step, self.versions if versions is None else versions, self.dataset_digest,
                                self.code_versions["evaluate"])

    def record(self, step: Step, run_id: str | None, error: str | None) -> None:
        """A step's end: a finished training's version joins `versions`; a failure names the step's log."""
        if error is None:
            if step.entry == "train":
                self.versions[model_of(dict(step.options))] = reuse.registered_version(run_id)
            self.outcome.ran.append(step.label)
        else:
            log = Path(self.context.log_dir) / f"{step.key}.log"
            self.outcome.failed.append(f"{step.label}: {error} (log: {log})")
