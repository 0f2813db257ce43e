"""The whole study (paper section 4): 21 models per seed and their 41 attack evaluations per eps.

Each step is its own MLflow run nested under one parent run. A step whose entry point, options,
dataset digest and code version match a FINISHED run is reused, so an interrupted study rerun
with the same command does only what is missing. Steps run in worker processes (`jobs` at once),
in the order `imbadv.schedule` gives: trainings first, each evaluation once its models are trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from imbadv import store, tracking
from imbadv.config import PRESETS, ConfigError, default_cache_dir
from imbadv.data import load_dataset
from imbadv.schedule import Schedule, model_of

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None


@dataclass(frozen=True)
class StudyConfig:
    """A study: the paper's 21 models and 50 attacked combinations, per seed and eps (section 4)."""

    preset: str = field(default="paper", metadata={"help": "Preset of every model (paper, paper-fast, cpu, smoke)."})
    seeds: int = field(default=1, metadata={"help": "Seeds per configuration (0 .. seeds-1)."})
    data: str = field(default="cifar10", metadata={"help": "Data source, as for train."})
    eps: str = field(default="0.01", metadata={"help": "One eps or a comma-separated sweep (section 3.2: 0.01)."})
    classes: str = field(default="all", metadata={"help": "'all' or comma-separated class ids."})
    jobs: int = field(default=1, metadata={"help": "Steps run at once, each in its own process."})
    force: bool = field(default=False, metadata={"help": "Rerun steps even when a finished run matches."})
    cache_dir: str = field(default_factory=default_cache_dir, metadata={"help": "Cache, as for train."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda'."})

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        if self.seeds < 1 or self.jobs < 1:
            raise ConfigError("seeds and jobs must be 1 or more: pass e.g. --seeds 1 --jobs 1")
        for value in self.eps_values:
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"eps {value} is outside [0, 1]: eps is in pixel units, e.g. --eps 0.01")

    @property
    def eps_values(self) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in self.eps.split(",") if v.strip())
        except ValueError as error:
            raise ConfigError(f"eps {self.eps!r} is not a number or a comma-separated list: pass e.g. "
                              "--eps 0.01,0.02") from error

    def class_ids(self, num_classes: int) -> tuple[int, ...]:
        if self.classes == "all":
            return tuple(range(num_classes))
        try:
            ids = tuple(int(v) for v in self.classes.split(","))
        except ValueError as error:
            raise ConfigError(f"classes {self.classes!r} is not 'all' or a list of ids: pass e.g. "
                              "--classes 3,5") from error
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"class ids {bad} are outside this dataset's {num_classes} classes: pass ids "
                              f"from 0 to {num_classes - 1}")
        return ids


@dataclass(frozen=True)
class Step:
    """One entry-point call of the study and its reuse key."""

    entry: str  # "train" or "evaluate"
    options: tuple[tuple[str, Any], ...]
    key: str

    @property
    def label(self) -> str:
        o = dict(self.options)
        model = o["sampling"] + ("" if o.get("class_id") is None else f"-c{o['class_id']}")
        if self.entry == "train":
            return f"train {model} s{o['seed']}"
        return f"evaluate {model} s{o['seed']} source={o['source']} eps={o['eps']:g}"


def step_key(entry: str, options: dict[str, Any], dataset_digest: str, code_version: str) -> str:
    payload = json.dumps({"entry": entry, "options": options, "dataset": dataset_digest, "code": code_version},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def plan(config: StudyConfig, num_classes: int, dataset_digest: str, code_version: str) -> list[Step]:
    """Trainings (balanced, under c, over c per seed), then evaluations (per seed and eps)."""
    classes = config.class_ids(num_classes)
    base = {"preset": config.preset, "data": config.data}
    specs: list[tuple[str, dict[str, Any]]] = []
    for seed in range(config.seeds):
        specs.append(("train", {**base, "seed": seed, "sampling": "balanced", "class_id": None}))
        for c in classes:
            for sampling in ("under", "over"):
                specs.append(("train", {**base, "seed": seed, "sampling": sampling, "class_id": c}))
    for seed in range(config.seeds):
        for eps in config.eps_values:
            attack = {**base, "seed": seed, "eps": eps, "attack": "fgsm", "direction": "ascent"}
            specs.append(("evaluate", {**attack, "sampling": "balanced", "class_id": None, "source": "self"}))
            for c in classes:
                for sampling in ("under", "over"):
                    for source in ("self", "balanced"):
                        specs.append(("evaluate", {**attack, "sampling": sampling, "class_id": c, "source": source}))
    return [Step(entry, tuple(sorted(options.items())), step_key(entry, options, dataset_digest, code_version))
            for entry, options in specs]


def finished_steps(experiment_id: str, keys: list[str]) -> dict[str, str]:
    """Step key -> run id of a FINISHED run with that key in the experiment."""
    found: dict[str, str] = {}
    wanted = set(keys)
    runs = MlflowClient().search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                                      max_results=50000)
    for run in runs:
        key = run.data.tags.get(tracking.TAG_STEP_KEY)
        if key in wanted and key not in found:
            found[key] = run.info.run_id
    return found


def discard_unfinished(experiment_id: str, step: Step) -> None:
    """Delete the runs an earlier attempt at this step left unfinished, so no duplicates remain.

    A killed training (RUNNING or KILLED) is kept: the train job resumes it from its checkpoint.
    """
    client = MlflowClient()
    keep = ("RUNNING", "KILLED") if step.entry == "train" else ()
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{tracking.TAG_STEP_KEY}` = '{step.key}' "
                                  "and attributes.status != 'FINISHED'"):
        resumable = run.info.status in keep and tracking.TAG_TRAIN_KEY in run.data.tags  # killed before its key
        if not resumable:
            client.delete_run(run.info.run_id)


def _run_step(step: Step, parent_run_id: str, experiment_id: str, cache_dir: str, device: str,
              log_dir: str, threads: int) -> str:
    """Worker: run one step in this process, output to a log file; returns the step's run id."""
    import torch

    from imbadv.evaluate_job import run_evaluate
    from imbadv.train_job import run_train

    os.environ.pop("MLFLOW_RUN_ID", None)  # the study's own run, when started by `mlflow run`
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id  # steps go where their parent is
    torch.set_num_threads(threads)
    log_path = Path(log_dir) / f"{step.key}.log"
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
            tracking.step_tags(parent_run_id, step.key):
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
    code = tracking.code_version()
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
    under_project = bool(os.environ.get("MLFLOW_RUN_ID"))  # `mlflow run` made the study's run
    store.prepare(None if under_project else tracking.EXPERIMENT)
    parent_id = None if under_project else _existing_parent(study_key)
    with store.call(mlflow.start_run, run_id=parent_id, run_name=f"study-{dataset_name}-{config.preset}") as parent:
        mlflow.set_tags({tracking.TAG_JOB: "study", tracking.TAG_STUDY_KEY: study_key, **tracking.provenance_tags(),
                         tracking.TAG_DATASET: dataset_name, tracking.TAG_DATASET_DIGEST: dataset_digest})
        if parent_id is None:
            mlflow.log_params({tracking.CONFIG_PARAM_PREFIX + k: str(v) for k, v in asdict(config).items()
                               if k not in ("force", "jobs", "cache_dir", "device")})
        experiment_id = parent.info.experiment_id
        done = {} if config.force else finished_steps(experiment_id, [s.key for s in steps])
        todo = [s for s in steps if s.key not in done]
        outcome = StudyOutcome(parent.info.run_id, [], [s.label for s in steps if s.key in done], [], 0.0)
        log_dir = Path(config.cache_dir).expanduser() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // config.jobs)
        bar = tqdm(total=len(steps), initial=len(steps) - len(todo), desc="study", unit="step")
        trained = {model_of(dict(s.options)) for s in steps if s.entry == "train" and s.key in done}
        schedule = Schedule(todo, trained)
        with ProcessPoolExecutor(max_workers=config.jobs, mp_context=get_context("spawn")) as pool:
            pending: dict = {}
            while True:
                for step, reason in schedule.take_blocked():
                    outcome.failed.append(f"{step.label}: {reason}")
                    bar.update(1)
                while len(pending) < config.jobs and (step := schedule.next_ready()) is not None:
                    discard_unfinished(experiment_id, step)
                    future = pool.submit(_run_step, step, parent.info.run_id, experiment_id, config.cache_dir,
                                         config.device, str(log_dir), threads)
                    pending[future] = step
                if not pending:
                    break
                bar.set_postfix(running=len(pending), waiting=schedule.waiting)
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    step = pending.pop(future)
                    try:
                        future.result()
                        outcome.ran.append(step.label)
                        schedule.finished(step, succeeded=True)
                    except Exception as error:  # the step's run is FAILED; the study goes on
                        first_line = str(error).splitlines()[0] if str(error) else repr(error)
                        outcome.failed.append(f"{step.label}: {first_line} (log: {log_dir / (step.key + '.log')})")
                        schedule.finished(step, succeeded=False)
                    bar.update(1)
        bar.close()
        outcome.seconds = time.monotonic() - start
        mlflow.log_metrics({"steps_total": len(steps), "steps_reused": len(outcome.reused),
                            "steps_ran": len(outcome.ran), "steps_failed": len(outcome.failed)})
        if outcome.failed:
            raise StudyFailed(f"{len(outcome.failed)} study steps failed, first: {outcome.failed[0]}; rerun the "
                              "same command to complete the rest")
    return outcome


class StudyFailed(RuntimeError):
    """Some steps of a study failed; the finished ones are kept for the rerun."""


def _existing_parent(study_key: str) -> str | None:
    experiment = mlflow.get_experiment_by_name(tracking.EXPERIMENT)
    if experiment is None:
        return None
    runs = MlflowClient().search_runs([experiment.experiment_id],
                                      filter_string=f"tags.`{tracking.TAG_STUDY_KEY}` = '{study_key}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
