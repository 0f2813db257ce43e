"""The local executor: a study's steps on `--jobs` worker processes of this machine.

Steps go in the order `imbadv.study.schedule` gives: trainings first, largest first, and each
evaluation once its models are trained. On the shared engine, a target's ready evaluations go to
one worker together, and trainings of one kind may train side by side (`--group-trainings`).
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from tqdm.auto import tqdm

from imbadv.config import first_line
from imbadv.study import workers
from imbadv.study.config import StudyConfig, groupable
from imbadv.study.runner import StepResult, StudyRun, Task, discard_unfinished, run_task
from imbadv.study.schedule import Schedule
from imbadv.tracking import lifecycle


def prepare(config: StudyConfig) -> None:
    """Nothing to check: this machine runs what the config allows."""


def threads(config: StudyConfig) -> int:
    """Torch threads per step: the cores shared out between the jobs."""
    return workers.threads(config)


def group_size(config: StudyConfig) -> int:
    """Trainings per training group: the option, else 10 on CUDA for a preset a group can run, else 1."""
    if config.engine != "shared":
        return 1
    if config.group_trainings:
        return config.group_trainings
    if config.device == "cpu":
        return 1
    from imbadv.core.inference import resolve_device  # imports torch: only to ask for CUDA

    return 10 if resolve_device(config.device).type == "cuda" and groupable(config.preset) else 1


def drive(study: StudyRun, pool: ProcessPoolExecutor | None = None) -> None:
    """Run `study.todo` on `pool` (else on worker processes started here), recording each step."""
    if pool is None:
        with workers.start(study.config) as own:
            _drive(study, own)
    else:
        _drive(study, pool)


def _drive(study: StudyRun, pool: ProcessPoolExecutor) -> None:
    try:
        _run_steps(study, pool)
    except BaseException:  # Ctrl-C, SIGTERM (`workers.start`) or a failure here: no step outlives the study
        workers.stop(pool)
        lifecycle.mark_stopped(study.context.parent_run_id, study.context.experiment_id)
        raise


def _run_steps(study: StudyRun, pool: ProcessPoolExecutor) -> None:
    schedule = Schedule(study.todo, set(study.versions))
    bar = tqdm(total=len(study.steps), initial=len(study.outcome.reused), desc="study", unit="step")
    pending: dict[Future, Task] = {}
    while True:
        for step, reason in schedule.take_blocked():
            study.outcome.failed.append(f"{step.label}: {reason}")
            bar.update(1)
        while len(pending) < study.config.jobs and (task := _next_task(study, schedule, pending, bar)) is not None:
            for step in task.steps:
                discard_unfinished(study.context.experiment_id, step)
            pending[pool.submit(run_task, task, study.context)] = task
        if not pending:
            break
        bar.set_postfix(running=len(pending), waiting=schedule.waiting)
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            task = pending.pop(future)
            for step, (_, run_id, error) in zip(task.steps, _results(future, task), strict=True):
                study.record(step, run_id, error)
                schedule.finished(step, succeeded=error is None)
                bar.update(1)
    bar.close()


def _next_task(study: StudyRun, schedule: Schedule, pending: dict, bar: tqdm) -> Task | None:
    """The next ready step with what goes with it, as one task; evaluations whose pinned key a finished
    run has are recorded as reused instead. None when nothing is ready."""
    config = study.config
    shared = config.engine == "shared"
    while (step := schedule.next_ready()) is not None:
        idle = config.jobs - len(pending)  # workers free now, this step's included
        if step.entry == "train":
            return Task((step, *schedule.take_trainings_like(step, group_size(config) - 1)))
        # a target's evaluations go together, unless splitting them is what keeps idle workers busy
        together = [step] + (schedule.take_ready_like(step) if shared and schedule.ready() >= idle else [])
        to_run = []
        for pinned in (study.pin(s) for s in together):
            if pinned.key in study.finished:
                study.outcome.reused.append(pinned.label)
                bar.update(1)
            else:
                to_run.append(pinned)
        if to_run:
            return Task(tuple(to_run))
    return None


def _results(future: Future, task: Task) -> list[StepResult]:
    """(key, run id, error) for each step of a finished task, in the task's order."""
    try:
        by_key = {key: (run_id, error) for key, run_id, error in future.result()}
    except Exception as error:  # the worker itself died
        return [(step.key, None, first_line(error)) for step in task.steps]
    return [(step.key, *by_key[step.key]) for step in task.steps]
