"""The whole study (paper section 4): 21 models per seed and their 41 attack evaluations per eps.

Each step is its own MLflow run nested under one parent run. A step whose entry point, options,
dataset digest and code version match a FINISHED run is reused, so an interrupted study rerun
with the same command does only what is missing. Steps run in worker processes (`jobs` at once),
in the order `imbadv.study.schedule` gives: trainings first, each evaluation once its models are
trained.

Two engines run the same steps to the same results. `shared` (the default): each worker is
started once, imports, loads the data and opens the store before the first step, and keeps what
steps have in common (`imbadv.jobs.shared`); all ready evaluations of one target model go to one
worker together, so they share its clean pass and ONNX check, and the black-box adversarial set is
crafted once per worker, source and eps. `isolated`: every step computes all it needs itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from imbadv.config import StudyConfig, first_line, groupable
from imbadv.core.data import load_dataset
from imbadv.study.plan import Step, plan, step_key
from imbadv.study import reuse, workers
from imbadv.study.schedule import Model, Schedule, model_of
from imbadv.tracking import lifecycle, names, provenance, store

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None


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
            store.call(client.delete_run, run.info.run_id)


def _step_environment(experiment_id: str, threads: int) -> None:
    """Worker: steps log under the study's experiment, with the study's share of the cores."""
    import torch

    os.environ.pop("MLFLOW_RUN_ID", None)  # the study's own run, when started by `mlflow run`
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id  # steps go where their parent is
    torch.set_num_threads(threads)


def _run_step(step: Step, parent_run_id: str, experiment_id: str, cache_dir: str, device: str,
              log_dir: str, threads: int, engine: str = "isolated", tags: dict[str, str] | None = None,
              **job_options: Any) -> str:
    """Worker: run one step in this process, output to a log file; returns the step's run id.

    `tags` go on the step's run beside the engine and the executor (default: local)."""
    from imbadv.jobs.evaluate import run_evaluate
    from imbadv.jobs.train import run_train

    _step_environment(experiment_id, threads)
    log_path = Path(log_dir) / f"{step.key}.log"
    step_tags = {names.TAG_ENGINE: engine, names.TAG_EXECUTOR: "local", **(tags or {})}
    with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
            lifecycle.step_tags(parent_run_id, step.key, step_tags):
        job = run_train if step.entry == "train" else run_evaluate
        return job(**dict(step.options), cache_dir=cache_dir, device=device, **job_options).run_id


def _run_training_group(steps: list[Step], parent_run_id: str, experiment_id: str, cache_dir: str, device: str,
                        log_dir: str, threads: int, whitebox: dict[str, dict[str, Any]] | None = None,
                        ) -> list[tuple[str, str | None, str | None]]:
    """Shared-engine worker: trainings side by side (`imbadv.core.group`), each its own run in its own
    thread; (key, run id, error) each. They log to one file, linked under every step's key.
    `whitebox`: by step key, the options of the model's white-box evaluation (see `run_train`)."""
    from imbadv.core.group import TrainingGroup
    from imbadv.jobs.train import run_train

    _step_environment(experiment_id, threads)
    group = TrainingGroup(len(steps))
    results: list[tuple[str, str | None, str | None]] = [(s.key, None, "did not run") for s in steps]

    def member(index: int, step: Step) -> None:
        try:
            with lifecycle.step_tags(parent_run_id, step.key, {names.TAG_ENGINE: "shared",
                                                               names.TAG_EXECUTOR: "local"}):
                run = run_train(**dict(step.options), cache_dir=cache_dir, device=device, group=group,
                                whitebox=(whitebox or {}).get(step.key))
            results[index] = (step.key, run.run_id, None)
        except Exception as error:  # this model's run is FAILED; the others go on
            results[index] = (step.key, None, first_line(error))
        finally:
            group.release()

    log_path = Path(log_dir) / f"{steps[0].key}.log"
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        workers_ = [threading.Thread(target=contextvars.copy_context().run, args=(member, i, s), name=s.label)
                    for i, s in enumerate(steps)]
        for thread in workers_:
            thread.start()
        for thread in workers_:
            thread.join()
    for step in steps[1:]:
        linked = Path(log_dir) / f"{step.key}.log"
        linked.unlink(missing_ok=True)
        os.link(log_path, linked)
    return results


def group_size(config: StudyConfig) -> int:
    """Trainings per training group: the option, else 10 on CUDA for a preset a group can run, else 1."""
    if config.group_trainings:
        return config.group_trainings
    if config.device == "cpu":
        return 1
    from imbadv.core.inference import resolve_device  # imports torch: only to ask for CUDA

    return 10 if resolve_device(config.device).type == "cuda" and groupable(config.preset) else 1


def _run_evaluations(steps: list[Step], parent_run_id: str, experiment_id: str, cache_dir: str, device: str,
                     log_dir: str, threads: int) -> list[tuple[str, str | None, str | None]]:
    """Shared-engine worker: the evaluations of one target, each its own run; (key, run id, error) each.

    White-box ones go first at each eps, so black-box ones find the target's clean pass computed.
    """
    results = []
    for step in sorted(steps, key=lambda s: (dict(s.options)["eps"], dict(s.options)["source"] != "self")):
        try:
            run_id = _run_step(step, parent_run_id, experiment_id, cache_dir, device, log_dir, threads, "shared")
            results.append((step.key, run_id, None))
        except Exception as error:  # the step's run is FAILED; the other evaluations go on
            results.append((step.key, None, first_line(error)))
    return results


def whitebox_options(steps: list[Step]) -> dict[str, dict[str, Any]]:
    """By training step key, the options of the first white-box evaluation of the model it trains:
    a shared-engine training runs that attack's gradient pass as its test pass (`run_train`)."""
    evaluations: dict[Model, dict[str, Any]] = {}
    for step in steps:
        options = dict(step.options)
        if step.entry == "evaluate" and options["source"] == "self":
            evaluations.setdefault(model_of(options), options)
    return {step.key: evaluations[model] for step in steps
            if step.entry == "train" and (model := model_of(dict(step.options))) in evaluations}


@dataclass
class StudyOutcome:
    parent_run_id: str
    ran: list[str]
    reused: list[str]
    failed: list[str]
    seconds: float


def run_study(config: StudyConfig, pool: ProcessPoolExecutor | None = None) -> StudyOutcome:
    """Run (or complete) a study and return what ran, what was reused and what failed.

    `pool`: the study's workers, when the caller started them (`imbadv.study.workers.start`).
    """
    start = time.monotonic()
    if config.executor == "ray":  # the cluster's workers run the steps
        from imbadv.study import ray_executor

        ray_executor.prepare(config)  # a cluster that cannot run the study stops it before any run exists
        return _study(config, pool, start)
    if pool is not None:
        return _study(config, pool, start)
    with workers.start(config) as own:
        return _study(config, own, start)


def _study(config: StudyConfig, pool: ProcessPoolExecutor, start: float) -> StudyOutcome:
    dataset = load_dataset(config.data, config.cache_dir)
    code = provenance.code_version()
    steps = plan(config, dataset.num_classes, dataset.digest, code)
    identity = {k: v for k, v in asdict(config).items() if k not in RUN_OPTIONS}
    study_key = step_key("study", identity, dataset.digest, code)  # any engine or executor completes the same study
    with _exclusive(Path(config.cache_dir).expanduser() / "locks" / f"study-{study_key}.lock"):
        return _run_steps(config, pool, dataset.name, dataset.digest, steps, study_key, start)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Refuse to run two identical studies at once on this machine (they would duplicate steps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StudyFailed("another `imbadv reproduce` with the same settings is running on this machine: "
                                  f"wait for it to finish or stop it (lock {path})") from None
        yield


def _run_steps(config: StudyConfig, pool: ProcessPoolExecutor, dataset_name: str, dataset_digest: str,
               steps: list[Step], study_key: str, start: float) -> StudyOutcome:
    """Open (or reopen) the study's parent run, run what is not finished under it, log the counts."""
    under_project = bool(os.environ.get("MLFLOW_RUN_ID"))  # `mlflow run` made the study's run
    store.prepare(None if under_project else names.EXPERIMENT)
    parent_id = None if under_project else _existing_parent(study_key)
    with store.call(mlflow.start_run, run_id=parent_id, run_name=f"study-{dataset_name}-{config.preset}") as parent:
        store.call(mlflow.set_tags, {names.TAG_JOB: "study", names.TAG_STUDY_KEY: study_key,
                                     names.TAG_ENGINE: config.engine,
                                     **provenance.provenance_tags(), names.TAG_DATASET: dataset_name,
                                     names.TAG_DATASET_DIGEST: dataset_digest})
        if parent_id is None:
            store.call(mlflow.log_params, {names.CONFIG_PARAM_PREFIX + k: str(v) for k, v in asdict(config).items()
                                           if k not in RUN_OPTIONS})
        experiment_id = parent.info.experiment_id
        outcome = StudyOutcome(parent.info.run_id, [], [], [], 0.0)
        if config.executor == "ray":
            from imbadv.study import ray_executor

            store.call(mlflow.set_tag, names.TAG_EXECUTOR, "ray")
            ray_executor.drive(config, steps, dataset_digest, experiment_id, outcome)
        else:
            _drive_pool(config, pool, steps, dataset_digest, experiment_id, outcome)
        outcome.seconds = time.monotonic() - start
        store.call(mlflow.log_metrics, {"steps_total": len(steps), "steps_reused": len(outcome.reused),
                                        "steps_ran": len(outcome.ran), "steps_failed": len(outcome.failed)})
        if outcome.failed:
            raise StudyFailed(f"{len(outcome.failed)} study steps failed, first: {outcome.failed[0]}; rerun the "
                              "same command to complete the rest")
    return outcome


def _drive_pool(config: StudyConfig, pool: ProcessPoolExecutor, steps: list[Step], dataset_digest: str,
                experiment_id: str, outcome: StudyOutcome) -> None:
    """Run the steps that are not finished on `config.jobs` worker processes, in the schedule's order.

    Finished trainings are reused first; each evaluation, once its models are trained, is pinned to
    their exact versions and reused if a finished run has that key. A failed step is recorded in
    `outcome.failed`, with the steps that can no longer run; the others go on.
    """
    log_dir = Path(config.cache_dir).expanduser() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = workers.threads(config)
    shared = config.engine == "shared"
    trainings_together = group_size(config) if shared else 1
    finished = {} if config.force else reuse.finished_steps(experiment_id)
    code = provenance.code_version()
    versions: dict[Model, str] = {}  # the study's models: (seed, sampling, class_id) -> models:/<name>/<version>
    trainings = [s for s in steps if s.entry == "train"]
    reusable = {} if config.force else reuse.finished_trainings(trainings, finished, dataset_digest)
    todo = []
    for step in steps:
        if step.key in reusable:
            versions[model_of(dict(step.options))] = reuse.registered_version(reusable[step.key])
            outcome.reused.append(step.label)
        else:
            todo.append(step)
    schedule = Schedule(todo, set(versions))
    bar = tqdm(total=len(steps), initial=len(steps) - len(todo), desc="study", unit="step")
    pending: dict[Future, list[Step]] = {}
    common = (outcome.parent_run_id, experiment_id, config.cache_dir, config.device, str(log_dir), threads)
    whitebox = whitebox_options(steps) if shared else {}
    while True:
        for step, reason in schedule.take_blocked():
            outcome.failed.append(f"{step.label}: {reason}")
            bar.update(1)
        while len(pending) < config.jobs and (step := schedule.next_ready()) is not None:
            idle = config.jobs - len(pending)  # workers free now, this step's included
            # a target's evaluations go together, unless splitting them is what keeps idle workers busy
            together = shared and step.entry == "evaluate" and schedule.ready() >= idle
            group = [step] + (schedule.take_ready_like(step) if together else [])
            if step.entry == "train" and trainings_together > 1:
                group += schedule.take_trainings_like(step, trainings_together - 1)
            if step.entry == "evaluate":
                group = [reuse.pin_models(s, versions, dataset_digest, code) for s in group]
                for reused in [s for s in group if s.key in finished]:
                    outcome.reused.append(reused.label)
                    bar.update(1)
                group = [s for s in group if s.key not in finished]
                if not group:
                    continue
            for member in group:
                discard_unfinished(experiment_id, member)
            if step.entry == "evaluate" and shared:
                pending[pool.submit(_run_evaluations, group, *common)] = group
            elif len(group) > 1:
                pending[pool.submit(_run_training_group, group, *common, whitebox)] = group
            elif step.key in whitebox:
                pending[pool.submit(_run_step, step, *common, config.engine, whitebox=whitebox[step.key])] = group
            else:
                pending[pool.submit(_run_step, step, *common, config.engine)] = group
        if not pending:
            break
        bar.set_postfix(running=len(pending), waiting=schedule.waiting)
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            group = pending.pop(future)
            for step, run_id, error in _results(future, group):
                if error is None:
                    if step.entry == "train":
                        versions[model_of(dict(step.options))] = reuse.registered_version(run_id)
                    outcome.ran.append(step.label)
                else:
                    outcome.failed.append(f"{step.label}: {error} (log: {log_dir / f'{step.key}.log'})")
                schedule.finished(step, succeeded=error is None)
                bar.update(1)
    bar.close()


def _results(future: Future, group: list[Step]) -> list[tuple[Step, str | None, str | None]]:
    """(step, run id, error) for each step of a finished task: a single step or a group of evaluations."""
    try:
        value = future.result()
    except Exception as error:  # the task (its only step's run, or the worker) failed
        return [(step, None, first_line(error)) for step in group]
    if isinstance(value, str):
        return [(group[0], value, None)]
    by_key = {key: (run_id, error) for key, run_id, error in value}
    return [(step, *by_key[step.key]) for step in group]


# How a study runs, not what it computes: not logged as params, not in the study's key.
RUN_OPTIONS = ("force", "jobs", "cache_dir", "device", "engine", "group_trainings", "executor", "ray_address",
               "gpus_per_training")


class StudyFailed(RuntimeError):
    """Some steps of a study failed; the finished ones are kept for the rerun."""


def _existing_parent(study_key: str) -> str | None:
    experiment = mlflow.get_experiment_by_name(names.EXPERIMENT)
    if experiment is None:
        return None
    runs = MlflowClient().search_runs([experiment.experiment_id],
                                      filter_string=f"tags.`{names.TAG_STUDY_KEY}` = '{study_key}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
