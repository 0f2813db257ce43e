"""The study's step order (`imbadv.study.schedule`) against two plain phases, replayed on a finished study.

Result (the two-seed cpu study: 42 trainings, 82 evaluations, 216 minutes of step time at 2 jobs): the study's
order ends 1.02x sooner than two phases at 2 jobs, 1.04x at 4 and 1.10x at 8.

Each step of the study in the store takes the time its run took; the steps are handed to `--jobs`
workers by each policy, and the makespans are compared. 'phases' runs the trainings in plan order and
starts the evaluations once every training has finished; 'as-ready' is the study's own order
(largest trainings first, each evaluation once its models are trained). This times the order alone:
step durations are those measured in the study, at the number of jobs it ran with.

    python benchmarks/bench_schedule.py --tracking-uri sqlite:///study/mlflow.db --preset cpu --jobs 1,2,4
"""

from __future__ import annotations

import argparse
import heapq
from collections.abc import Callable

import mlflow
from mlflow.tracking import MlflowClient

from imbadv.tracking import names
from imbadv.study.schedule import Schedule
from imbadv.study.plan import Step

_SAMPLING_ORDER = {"balanced": 0, "under": 1, "over": 2}


def study_steps(preset: str, data: str | None) -> dict[Step, float]:
    """Each finished train and evaluate run of the preset as a Step, with its seconds."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    steps: dict[Step, float] = {}
    for job in ("train", "evaluate"):
        query = f"tags.`{names.TAG_JOB}` = '{job}' and params.`config.preset` = '{preset}' " \
                "and attributes.status = 'FINISHED'"
        if data:
            query += f" and params.`config.data` = '{data}'"
        for run in client.search_runs(experiments, filter_string=query, max_results=50000):
            params = run.data.params
            class_id = params.get("config.class_id", "None")
            options = {"seed": int(params["config.seed"]), "sampling": params["config.sampling"],
                       "class_id": None if class_id in ("None", "") else int(class_id)}
            if job == "evaluate":
                options |= {"source": params["config.source"], "eps": float(params["config.eps"])}
            step = Step(job, tuple(sorted(options.items())), run.info.run_id)
            steps[step] = (run.info.end_time - run.info.start_time) / 1000
    return steps


def plan_order(step: Step) -> tuple:
    o = dict(step.options)
    return (step.entry != "train", o["seed"], o.get("eps", 0.0), o["class_id"] is not None, o["class_id"] or 0,
            _SAMPLING_ORDER[o["sampling"]], o.get("source", ""))


def makespan(durations: dict[Step, float], jobs: int, next_step: Callable[[], Step | None],
             finished: Callable[[Step], None]) -> float:
    """Seconds until the last step ends, with `jobs` workers taking steps as `next_step` hands them out."""
    now, running, left = 0.0, [], len(durations)
    while left:
        while len(running) < jobs and (step := next_step()) is not None:
            heapq.heappush(running, (now + durations[step], id(step), step))
        if not running:
            raise RuntimeError("steps remain that no policy can start: the study in the store is incomplete")
        now, _, step = heapq.heappop(running)
        finished(step)
        left -= 1
    return now


def as_ready(durations: dict[Step, float], jobs: int) -> float:
    schedule = Schedule(sorted(durations, key=plan_order), trained=set())
    return makespan(durations, jobs, schedule.next_ready, lambda step: schedule.finished(step, succeeded=True))


def phases(durations: dict[Step, float], jobs: int) -> float:
    order = sorted(durations, key=plan_order)
    trainings_left = sum(s.entry == "train" for s in order)

    def next_step() -> Step | None:
        if order and (order[0].entry == "train" or trainings_left == 0):
            return order.pop(0)
        return None

    def finished(step: Step) -> None:
        nonlocal trainings_left
        trainings_left -= step.entry == "train"

    return makespan(durations, jobs, next_step, finished)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="the finished study's store")
    parser.add_argument("--preset", required=True)
    parser.add_argument("--data", default=None, help="the study's data source, if the store holds several")
    parser.add_argument("--jobs", default="1,2,4", help="comma-separated worker counts")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    durations = study_steps(args.preset, args.data)
    trainings = sum(s.entry == "train" for s in durations)
    print(f"{trainings} trainings and {len(durations) - trainings} evaluations, "
          f"{sum(durations.values()) / 60:.1f} min of step time")
    print(f"{'jobs':>4}  {'phases':>10}  {'as-ready':>10}  {'ratio':>6}")
    for jobs in (int(j) for j in args.jobs.split(",")):
        before, after = phases(durations, jobs), as_ready(durations, jobs)
        print(f"{jobs:>4}  {before / 60:>8.1f} m  {after / 60:>8.1f} m  {before / after:>5.2f}x")


if __name__ == "__main__":
    main()
