"""Wall time per phase of a study, read from its runs in the tracking store, as JSON.

Phases are spans of the runs' own start and end times: training (the 21 models per seed),
evaluation (the attack runs), and the report (timed by the caller), over the runs of seeds 0 to
`--seeds` - 1. When only part of the study
finished (a budget ran out, or `--classes` picked a subset), each phase is extrapolated to the
whole study from its mean time per finished step, and the JSON says so. A preflight training run
before the study (gpu_study.sh) is reported apart, as `preflight_s`.

    MLFLOW_TRACKING_URI=sqlite:///study/mlflow.db python gpu/study_timing.py --preset paper-fast \
        --data cifar10 [--seeds 1] [--report-seconds 12.3] [--output study.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections import Counter

import torch
from mlflow.tracking import MlflowClient

from imbadv.tracking import names

# One seed and one eps of the paper's study (section 4): 21 trainings, 41 attack evaluations.
FULL_STUDY = {"train": 21, "evaluate": 41}


def phase(runs: list) -> dict:
    finished = [r for r in runs if r.info.status == "FINISHED" and r.info.end_time]
    if not finished:
        return {"steps_finished": 0, "wall_s": 0.0}
    start = min(r.info.start_time for r in finished)
    end = max(r.info.end_time for r in finished)
    return {"steps_finished": len(finished), "wall_s": round((end - start) / 1000, 1),
            "mean_run_s": round(sum(r.info.end_time - r.info.start_time for r in finished) / len(finished) / 1000, 1)}


def gpu_utilization(path: str | None) -> dict | None:
    """Mean and median GPU utilisation (%) and peak memory (MiB) over nvidia-smi's samples."""
    if path is None:
        return None
    samples = []
    with open(path) as handle:
        for line in handle:
            fields = [f.strip() for f in line.split(",")]
            if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
                samples.append((int(fields[0]), int(fields[1])))
    if not samples:
        return {"samples": 0}
    utilization = [u for u, _ in samples]
    return {"samples": len(samples), "mean_pct": round(statistics.mean(utilization), 1),
            "median_pct": statistics.median(utilization), "peak_memory_mib": max(m for _, m in samples)}


def group_check(path: str | None, fallback: str | None) -> dict | None:
    """The preflight's group-against-loop measurement, and why the study did not group, if it did not."""
    if path is None and fallback is None:
        return None
    measured = {}
    if path is not None:
        with open(path) as handle:
            measured = json.load(handle)
    return {**measured, "fallback": fallback}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--data", required=True, help="as given to imbadv reproduce")
    parser.add_argument("--seeds", type=int, default=1, help="as given to imbadv reproduce: seeds 0 to N-1")
    parser.add_argument("--report-seconds", type=float, default=None)
    parser.add_argument("--preflight-seconds", type=float, default=None,
                        help="seconds of the preflight training run before the study (not in the phases)")
    parser.add_argument("--budget-exceeded", action="store_true", help="the study was stopped by its time budget")
    parser.add_argument("--engine", default=None, help="the study engine, as given to imbadv reproduce")
    parser.add_argument("--group-trainings", type=int, default=None,
                        help="the --group-trainings the study ran with (after the preflight's check)")
    parser.add_argument("--group-check", default=None,
                        help="the preflight's training-group check (bench_group.py --json)")
    parser.add_argument("--group-fallback", default=None,
                        help="why the study trains one model at a time although groups were allowed")
    parser.add_argument("--gpu-samples", default=None,
                        help="nvidia-smi samples taken during the study: 'utilization %%, memory MiB' per line")
    parser.add_argument("--output", default=None, help="write the JSON here as well as to stdout")
    args = parser.parse_args()

    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = {job: [r for r in client.search_runs(experiments, max_results=5000, filter_string=(
        f"tags.`{names.TAG_JOB}` = '{job}' and params.`config.preset` = '{args.preset}' "
        f"and params.`config.data` = '{args.data}'")) if int(r.data.params["config.seed"]) < args.seeds]
            for job in FULL_STUDY}
    phases = {job: phase(found) for job, found in runs.items()}

    trained = [r for r in runs["train"] if r.info.status == "FINISHED"]
    image_epochs = sum(float(r.data.params.get("train_images", 0)) * r.data.metrics.get("epochs_run", 0)
                       for r in trained)
    train_seconds = sum((r.info.end_time - r.info.start_time) / 1000 for r in trained)
    accuracies = dict(sorted((int(r.data.params["config.seed"]), r.data.metrics["test_acc"]) for r in trained
                             if r.data.params.get("config.sampling") == "balanced" and "test_acc" in r.data.metrics))

    extrapolated = False
    for job, per_seed in FULL_STUDY.items():
        done, full = phases[job]["steps_finished"], per_seed * args.seeds
        phases[job]["steps_in_full_study"] = full
        if done == 0:  # nothing to extrapolate from
            phases[job]["wall_s_full_study_estimate"] = None
        elif done < full:
            extrapolated = True
            phases[job]["wall_s_full_study_estimate"] = round(phases[job]["wall_s"] * full / done, 1)
        else:
            phases[job]["wall_s_full_study_estimate"] = phases[job]["wall_s"]
    if args.report_seconds is not None:
        phases["report"] = {"wall_s": round(args.report_seconds, 1)}
    estimates = [p.get("wall_s_full_study_estimate", p["wall_s"]) for p in phases.values()]
    total = None if None in estimates else sum(estimates)

    result = {
        "preset": args.preset, "data": args.data, "seeds": args.seeds, "phases": phases,
        "total_wall_s_full_study": None if total is None else round(total, 1),
        "extrapolated": extrapolated or args.budget_exceeded,
        "note": ("only part of the study finished; full-study times are extrapolated from the mean time per "
                 "finished step of each phase" if extrapolated or args.budget_exceeded else "the whole study ran"),
        "preflight_s": args.preflight_seconds,
        "train_images_per_s": round(image_epochs / train_seconds, 1) if train_seconds else None,  # per process
        "train_images_per_s_all_jobs": (round(image_epochs / phases["train"]["wall_s"], 1)
                                        if phases["train"]["wall_s"] else None),
        "balanced_test_acc": statistics.mean(accuracies.values()) if accuracies else None,  # over seeds
        "balanced_test_acc_per_seed": accuracies,
        "engine": args.engine,
        "group_trainings": args.group_trainings,
        "group_check": group_check(args.group_check, args.group_fallback),
        "onnx_providers": dict(Counter(r.data.tags.get(names.TAG_ONNX_PROVIDER, "unknown")
                                       for job in FULL_STUDY for r in runs[job] if r.info.status == "FINISHED")),
        "gpu_utilization": gpu_utilization(args.gpu_samples),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
