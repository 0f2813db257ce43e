"""Every run of a tracking store as one CSV row: name, status, start (seconds after the first run),
duration, what it trained or attacked, and its summary metrics (per-epoch curves left out).

    MLFLOW_TRACKING_URI=sqlite:///study/mlflow.db python benchmarks/study_runs.py --output runs.csv

gpu_study.sh writes one per call; an example: benchmarks/results/gpu_study-h200-paper-fast-c0-1-2-3-5-runs.csv.
"""

from __future__ import annotations

import argparse
import csv

from mlflow.tracking import MlflowClient

TAGS = ["imbadv.job", "imbadv.target", "imbadv.source", "imbadv.attack", "imbadv.eps", "imbadv.device"]
EPOCH_CURVES = ("train_", "val_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    client = MlflowClient()
    runs = [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id], max_results=50_000)]
    runs = sorted((run for run in runs if run.info.start_time), key=lambda run: run.info.start_time)
    first = runs[0].info.start_time if runs else 0  # no runs: a study stopped before its first step
    metrics = sorted({key for run in runs for key in run.data.metrics if not key.startswith(EPOCH_CURVES)})
    with open(args.output, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run_name", "status", "start_s", "run_s", *TAGS, *metrics])
        for run in runs:
            end = run.info.end_time or run.info.start_time
            writer.writerow([run.info.run_name, run.info.status, round((run.info.start_time - first) / 1000, 1),
                             round((end - run.info.start_time) / 1000, 1), *(run.data.tags.get(t, "") for t in TAGS),
                             *(f"{run.data.metrics[k]:.5g}" if k in run.data.metrics else "" for k in metrics)])
    print(f"{len(runs)} runs -> {args.output}")


if __name__ == "__main__":
    main()
