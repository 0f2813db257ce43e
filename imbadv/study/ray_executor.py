"""The Ray executor: a study's steps as tasks on a Ray cluster (`imbadv reproduce --executor ray`).

Every training is a Ray task asking for `--cpus-per-step` CPUs and `--gpus-per-training` of a
GPU; every evaluation is a task that takes the object references of the trainings it attacks, so
Ray starts it once they are done and never when one failed. Reuse and resume are the engine's:
finished steps are found in the tracking store before anything is submitted, an evaluation pinned
to its models' versions is skipped on the node when a finished run has its key, and a training
that Ray retries after its node died resumes the run of its first attempt from the last
checkpoint in the tracking store.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import mlflow
from tqdm.auto import tqdm

from imbadv.config import ConfigError, first_line
from imbadv.study import reuse
from imbadv.study.config import StudyConfig
from imbadv.study.plan import Step
from imbadv.study.runner import StepContext, StudyRun, discard_unfinished, run_step
from imbadv.study.schedule import Model, model_of
from imbadv.tracking import names

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
        raise ConfigError(f"tracking URI {uri} is a store on this machine, but the Ray cluster has {nodes} nodes: "
                          "run a shared `mlflow server` (docs/tracking.md: A team server) and set "
                          "MLFLOW_TRACKING_URI to its http:// address")


def prepare(config: StudyConfig) -> None:
    """Join the cluster and check, before any run exists, that its nodes can run the study's steps."""
    import ray

    connect(config.ray_address)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    check_tracking_uri(mlflow.get_tracking_uri(), len(nodes))
    check_resources(config, [node.get("Resources", {}) for node in nodes])


def check_resources(config: StudyConfig, nodes: list[dict[str, float]]) -> None:
    """Refuse a study whose steps no node has the resources for (`nodes`: each node's Ray resources)."""
    largest = max((node.get("CPU", 0) for node in nodes), default=0)
    if config.cpus_per_step > largest:
        raise ConfigError(f"each step asks for {config.cpus_per_step} CPUs (--cpus-per-step) but the largest Ray "
                          f"node has {largest:g}: pass --cpus-per-step {max(int(largest), 1)} or less")
    if config.gpus_per_training and not any(node.get("GPU", 0) for node in nodes):
        raise ConfigError(f"--gpus-per-training {config.gpus_per_training:g} asks for GPUs but no Ray node has one: "
                          "pass --gpus-per-training 0")


def threads(config: StudyConfig) -> int:
    """Torch threads per step: the CPUs each step asks Ray for."""
    return config.cpus_per_step


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


def _train(step: Step, context: StepContext) -> str:
    """Ray task: one training, in this worker process; its run id."""
    _share_work(context)
    tags = _attempt_tags()
    resume = _earlier_attempt(step, tags[names.TAG_RAY_TASK]) if tags[names.TAG_RAY_TASK] else None
    return run_step(step, context, tags, **({"resume": resume} if resume else {}))


def _evaluate(study: StudyRun, step: Step, *training_run_ids: str) -> tuple[str, str, bool]:
    """Ray task: one evaluation, started by Ray once the trainings it needs are done (their run ids
    arrive as `training_run_ids`); (pinned key, run id, whether a finished run was reused)."""
    _share_work(study.context)
    needed = [m for m in reuse.attacked_models(step) if m not in study.versions]
    versions = study.versions | {m: reuse.registered_version(r) for m, r in zip(needed, training_run_ids, strict=True)}
    pinned = study.pin(step, versions)
    if pinned.key in study.finished:
        return pinned.key, study.finished[pinned.key], True
    return pinned.key, run_step(pinned, study.context, _attempt_tags()), False


def _share_work(context: StepContext) -> None:
    """On the shared engine, the steps of one Ray worker process share their work (`imbadv.jobs.shared`)."""
    if context.engine == "shared":
        from imbadv.jobs.shared import share_in_this_process

        share_in_this_process()


def drive(study: StudyRun, pool: Any = None) -> None:
    """Submit every step of `study.todo` to the cluster (joined by `prepare`), with the trainings'
    object references as the evaluations' arguments, and record what ran, what was reused and what failed.
    `pool` is the local executor's, unused here."""
    import ray

    config = study.config
    train_task = ray.remote(_train).options(num_cpus=config.cpus_per_step, num_gpus=config.gpus_per_training,
                                            max_retries=TASK_RETRIES)
    evaluate_task = ray.remote(_evaluate).options(num_cpus=config.cpus_per_step, max_retries=TASK_RETRIES)
    references: dict[Model, Any] = {}  # trainings submitted now: their run ids, once done
    pending: dict[Any, Step] = {}
    for step in (s for s in study.todo if s.entry == "train"):
        discard_unfinished(study.context.experiment_id, step)
        reference = train_task.remote(step, study.context)
        references[model_of(dict(step.options))] = reference
        pending[reference] = step
    shipped = ray.put(study)  # once for all evaluations
    for step in (s for s in study.todo if s.entry == "evaluate"):
        needed = [m for m in reuse.attacked_models(step) if m not in study.versions]
        pending[evaluate_task.remote(shipped, step, *(references[m] for m in needed))] = step
    _collect(pending, study)


def _collect(pending: dict[Any, Step], study: StudyRun) -> None:
    import ray

    outcome = study.outcome
    bar = tqdm(total=len(study.steps), initial=len(outcome.reused), desc="study (ray)", unit="step")
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

