"""The study on a Ray cluster (`imbadv reproduce --executor ray`).

Every training is a Ray task asking for the cores a local worker would get and `gpus_per_training`
of a GPU; every evaluation is a task that takes the object references of the trainings it attacks,
so Ray starts it once they are done and never when one failed. Reuse and resume are the local
executor's: finished steps are found in the tracking store before anything is submitted, an
evaluation pinned to its models' versions is skipped on the node when a finished run has its key,
and a training that Ray retries after its node died resumes the run of its first attempt from the
last checkpoint in the tracking store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow
from tqdm.auto import tqdm

from imbadv.config import ConfigError, StudyConfig, first_line
from imbadv.study import reuse, workers
from imbadv.study.plan import Step
from imbadv.study.schedule import Model, model_of
from imbadv.tracking import names, provenance

if TYPE_CHECKING:
    from imbadv.study.engine import StudyOutcome

TASK_RETRIES = 3  # a task whose node or worker process dies runs again, elsewhere if need be
LOCAL_STORES = ("", "file", "sqlite")  # tracking URIs only the machine holding them can reach


def connect(address: str) -> None:
    """Join the cluster at `address`, else $RAY_ADDRESS, else start a Ray instance on this machine."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    # the steps' workers log to the store and cache the driver uses, wherever their raylet started
    forwarded = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "IMBADV_CACHE")
                 if k in os.environ}
    ray.init(address=target, runtime_env={"env_vars": forwarded}, log_to_driver=False,
             **({} if target else {"include_dashboard": False}))


def check_tracking_uri(uri: str, nodes: int) -> None:
    """Refuse a store that only this machine can reach when the cluster has other nodes."""
    if nodes > 1 and urlparse(uri).scheme in LOCAL_STORES:
        raise ConfigError(f"tracking URI {uri} is a store on this machine, but the Ray cluster has {nodes} nodes: run "
                          "a shared `mlflow server` (README: A team server) and set MLFLOW_TRACKING_URI to its "
                          "http:// address")


def prepare(config: StudyConfig) -> None:
    """Join the cluster and check, before any run exists, that its nodes can run the study's steps."""
    import ray

    connect(config.ray_address)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    check_tracking_uri(mlflow.get_tracking_uri(), len(nodes))
    threads = workers.threads(config)
    largest = max((node.get("Resources", {}).get("CPU", 0) for node in nodes), default=0)
    if threads > largest:
        raise ConfigError(f"each step asks for {threads} CPUs (the cores here shared by --jobs {config.jobs}) but "
                          f"the largest Ray node has {largest:g}: pass a larger --jobs")
    if config.gpus_per_training and not any(node.get("Resources", {}).get("GPU", 0) for node in nodes):
        raise ConfigError(f"--gpus-per-training {config.gpus_per_training:g} asks for GPUs but no Ray node has one: "
                          "pass --gpus-per-training 0")


def _attempt_tags() -> dict[str, str]:
    import ray

    context = ray.get_runtime_context()
    return {names.TAG_EXECUTOR: "ray", names.TAG_RAY_NODE: context.get_node_id(),
            names.TAG_RAY_TASK: context.get_task_id() or ""}


def _earlier_attempt(step: Step, task_id: str) -> str | None:
    """The unfinished run an earlier attempt of this task left, when its node died mid-training."""
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=5,
                              filter_string=(f"tags.`{names.TAG_STEP_KEY}` = '{step.key}' and "
                                             f"tags.`{names.TAG_RAY_TASK}` = '{task_id}' and "
                                             "attributes.status != 'FINISHED'"),
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def _train(step: Step, common: tuple) -> str:
    """Ray task: one training, in this worker process; its run id."""
    from imbadv.jobs.shared import share_in_this_process
    from imbadv.study.engine import _run_step

    share_in_this_process()
    tags = _attempt_tags()
    resume = _earlier_attempt(step, tags[names.TAG_RAY_TASK]) if tags[names.TAG_RAY_TASK] else None
    return _run_step(step, *common, "shared", tags, **({"resume": resume} if resume else {}))


def _evaluate(step: Step, common: tuple, dataset_digest: str, code: str, finished: dict[str, str],
              trained: dict[Model, str], *training_run_ids: str) -> tuple[str, str, bool]:
    """Ray task: one evaluation, started by Ray once the trainings it needs are done (their run ids
    arrive as `training_run_ids`); (pinned key, run id, whether a finished run was reused)."""
    from imbadv.jobs.shared import share_in_this_process
    from imbadv.study.engine import _run_step

    share_in_this_process()
    needed = [m for m in reuse.attacked_models(step) if m not in trained]
    versions = dict(trained) | {m: reuse.registered_version(r) for m, r in zip(needed, training_run_ids, strict=True)}
    pinned = reuse.pin_models(step, versions, dataset_digest, code)
    if pinned.key in finished:
        return pinned.key, finished[pinned.key], True
    return pinned.key, _run_step(pinned, *common, "shared", _attempt_tags()), False


def drive(config: StudyConfig, steps: list[Step], dataset_digest: str, experiment_id: str,
          outcome: StudyOutcome) -> None:
    """Submit every step that is not finished to the cluster (joined by `prepare`), with the trainings'
    object references as the evaluations' arguments, and record what ran, what was reused and what failed."""
    import ray

    from imbadv.study.engine import discard_unfinished

    log_dir = Path(config.cache_dir).expanduser() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = workers.threads(config)
    common = (outcome.parent_run_id, experiment_id, config.cache_dir, config.device, str(log_dir), threads)
    finished = {} if config.force else reuse.finished_steps(experiment_id)
    code = provenance.code_version()
    trainings = [s for s in steps if s.entry == "train"]
    reusable = {} if config.force else reuse.finished_trainings(trainings, finished, dataset_digest)
    train_task = ray.remote(_train).options(num_cpus=threads, num_gpus=config.gpus_per_training,
                                            max_retries=TASK_RETRIES)
    evaluate_task = ray.remote(_evaluate).options(num_cpus=threads, max_retries=TASK_RETRIES)
    trained: dict[Model, str] = {}  # reused trainings: their versions
    references: dict[Model, Any] = {}  # trainings submitted now: their run ids, once done
    pending: dict[Any, Step] = {}
    for step in trainings:
        model = model_of(dict(step.options))
        if step.key in reusable:
            trained[model] = reuse.registered_version(reusable[step.key])
            outcome.reused.append(step.label)
            continue
        discard_unfinished(experiment_id, step)
        references[model] = train_task.remote(step, common)
        pending[references[model]] = step
    for step in (s for s in steps if s.entry == "evaluate"):
        needed = [m for m in reuse.attacked_models(step) if m not in trained]
        reference = evaluate_task.remote(step, common, dataset_digest, code, finished, trained,
                                         *(references[m] for m in needed))
        pending[reference] = step
    _collect(pending, len(steps), outcome)


def _collect(pending: dict[Any, Step], total: int, outcome: StudyOutcome) -> None:
    import ray

    bar = tqdm(total=total, initial=len(outcome.reused), desc="study (ray)", unit="step")
    remaining = list(pending)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        step = pending[done[0]]
        try:
            value = ray.get(done[0])
        except Exception as error:  # the step's run is FAILED, or a training it needs did
            outcome.failed.append(f"{step.label}: {_cause(error)}")
        else:
            reused = step.entry == "evaluate" and value[2]
            (outcome.reused if reused else outcome.ran).append(step.label)
        bar.update(1)
    bar.close()


def _cause(error: Exception) -> str:
    """The first line of what failed inside a Ray task, not Ray's wrapping of it."""
    cause = getattr(error, "cause", None) or error
    return first_line(cause)

