"""The whole study (paper section 4): 21 models per seed and their 41 attack evaluations per eps.

Each step is its own MLflow run nested under one parent run. A step whose entry point, options,
dataset digest and code version match a FINISHED run is reused, so an interrupted study rerun
with the same command does only what is missing. Steps run in worker processes (`jobs` at once),
in the order `imbadv.study.schedule` gives: trainings first, each evaluation once its models are
trained.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from imbadv.config import StudyConfig, first_line
from imbadv.core.data import load_dataset
from imbadv.study.plan import Step, plan, step_key
from imbadv.study import reuse
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


def _run_step(step: Step, parent_run_id: str, experiment_id: str, cache_dir: str, device: str,
              log_dir: str, threads: int) -> str:
    """Worker: run one step in this process, output to a log file; returns the step's run id."""
    import torch

    from imbadv.jobs.evaluate import run_evaluate
    from imbadv.jobs.train import run_train

    os.environ.pop("MLFLOW_RUN_ID", None)  # the study's own run, when started by `mlflow run`
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id  # steps go where their parent is
    torch.set_num_threads(threads)
    log_path = Path(log_dir) / f"{step.key}.log"
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
            lifecycle.step_tags(parent_run_id, step.key):
        job = run_train if step.entry == "train" else run_evaluate
        return job(**dict(step.options), cache_dir=cache_dir, device=device).run_id


@dataclass
class StudyOutcome:
    parent_run_id: str
    ran: list[str]
    reused: list[str]
    failed: list[str]
    seconds: float


def run_study(config: StudyConfig) -> StudyOutcome:
    """Run (or complete) a study and return what ran, what was reused and what failed."""
    start = time.monotonic()
    dataset = load_dataset(config.data, config.cache_dir)
    code = provenance.code_version()
    steps = plan(config, dataset.num_classes, dataset.digest, code)
    study_key = step_key("study", asdict(config) | {"force": False, "jobs": 0}, dataset.digest, code)
    with _exclusive(Path(config.cache_dir).expanduser() / "locks" / f"study-{study_key}.lock"):
        return _run_steps(config, dataset.name, dataset.digest, steps, study_key, start)


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


def _run_steps(config: StudyConfig, dataset_name: str, dataset_digest: str, steps: list[Step], study_key: str,
               start: float) -> StudyOutcome:
    """Open (or reopen) the study's parent run, run what is not finished under it, log the counts."""
    under_project = bool(os.environ.get("MLFLOW_RUN_ID"))  # `mlflow run` made the study's run
    store.prepare(None if under_project else names.EXPERIMENT)
    parent_id = None if under_project else _existing_parent(study_key)
    with store.call(mlflow.start_run, run_id=parent_id, run_name=f"study-{dataset_name}-{config.preset}") as parent:
        store.call(mlflow.set_tags, {names.TAG_JOB: "study", names.TAG_STUDY_KEY: study_key,
                                     **provenance.provenance_tags(), names.TAG_DATASET: dataset_name,
                                     names.TAG_DATASET_DIGEST: dataset_digest})
        if parent_id is None:
            store.call(mlflow.log_params, {names.CONFIG_PARAM_PREFIX + k: str(v) for k, v in asdict(config).items()
                                           if k not in ("force", "jobs", "cache_dir", "device")})
        experiment_id = parent.info.experiment_id
        outcome = StudyOutcome(parent.info.run_id, [], [], [], 0.0)
        _drive_pool(config, steps, dataset_digest, experiment_id, outcome)
        outcome.seconds = time.monotonic() - start
        store.call(mlflow.log_metrics, {"steps_total": len(steps), "steps_reused": len(outcome.reused),
                                        "steps_ran": len(outcome.ran), "steps_failed": len(outcome.failed)})
        if outcome.failed:
            raise StudyFailed(f"{len(outcome.failed)} study steps failed, first: {outcome.failed[0]}; rerun the "
                              "same command to complete the rest")
    return outcome


def _drive_pool(config: StudyConfig, steps: list[Step], dataset_digest: str, experiment_id: str,
                outcome: StudyOutcome) -> None:
    """Run the steps that are not finished on `config.jobs` worker processes, in the schedule's order.

    Finished trainings are reused first; each evaluation, once its models are trained, is pinned to
    their exact versions and reused if a finished run has that key. A failed step is recorded in
    `outcome.failed`, with the steps that can no longer run; the others go on.
    """
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
    log_dir = Path(config.cache_dir).expanduser() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // config.jobs)
    schedule = Schedule(todo, set(versions))
    bar = tqdm(total=len(steps), initial=len(steps) - len(todo), desc="study", unit="step")
    pending: dict[Future, Step] = {}
    with ProcessPoolExecutor(max_workers=config.jobs, mp_context=get_context("spawn")) as pool:
        while True:
            for step, reason in schedule.take_blocked():
                outcome.failed.append(f"{step.label}: {reason}")
                bar.update(1)
            while len(pending) < config.jobs and (step := schedule.next_ready()) is not None:
                if step.entry == "evaluate":
                    step = reuse.pin_models(step, versions, dataset_digest, code)
                    if step.key in finished:
                        outcome.reused.append(step.label)
                        bar.update(1)
                        continue
                discard_unfinished(experiment_id, step)
                pending[pool.submit(_run_step, step, outcome.parent_run_id, experiment_id, config.cache_dir,
                                    config.device, str(log_dir), threads)] = step
            if not pending:
                break
            bar.set_postfix(running=len(pending), waiting=schedule.waiting)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                step = pending.pop(future)
                try:
                    run_id = future.result()
                    if step.entry == "train":
                        versions[model_of(dict(step.options))] = reuse.registered_version(run_id)
                    outcome.ran.append(step.label)
                    schedule.finished(step, succeeded=True)
                except Exception as error:  # the step's run is FAILED; the study goes on
                    log_path = log_dir / f"{step.key}.log"
                    outcome.failed.append(f"{step.label}: {first_line(error)} (log: {log_path})")
                    schedule.finished(step, succeeded=False)
                bar.update(1)
    bar.close()


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
