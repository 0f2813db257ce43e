"""The study engines side by side: `--engine isolated` (every step computes all it needs) against
`--engine shared` (long-lived workers sharing data, models, clean passes, ONNX checks and the
black-box adversarial sets), each on the same study in a fresh store.

Prints the wall time of each `imbadv reproduce` (process start to exit), their ratio, and how many
Table 1 cells and evaluation metrics are equal. Both engines run at the same --jobs, so every step
gets the same torch thread count (the thread count changes float results). Rounds alternate the
order of the engines; the median of the rounds is reported.

    python benchmarks/bench_study.py --preset smoke --classes 3,5 [--jobs 1] [--rounds 1]

`--train-options` reaches both engines' trainings alike (e.g. `precision=bf16`), so the engines are
compared at any explicit setting.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_DATA = SHARED / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
ENGINES = ("isolated", "shared")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("IMBADV_TEST_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--classes", default="3,5")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-options", default="", help="as `imbadv reproduce --train-options`, for both engines")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds, each running both engines")
    parser.add_argument("--cache-dir", default=os.environ.get("IMBADV_CACHE", str(Path.home() / ".cache" / "imbadv")))
    parser.add_argument("--keep", help="folder for the stores (default: a temporary one, removed)")
    return parser.parse_args()


def run_study(args: argparse.Namespace, engine: str, folder: Path) -> float:
    """Seconds of one `imbadv reproduce` with `engine` in a fresh store under `folder`."""
    folder.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "IMBADV_CACHE": args.cache_dir}
    # The store's tables are made before the clock starts, as in gpu_study.sh.
    subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient; "
                    "MlflowClient().search_experiments(max_results=1)"], env=env, check=True, capture_output=True)
    command = [sys.executable, "-m", "imbadv", "reproduce", "--preset", args.preset, "--data", args.data,
               "--classes", args.classes, "--seeds", str(args.seeds), "--jobs", str(args.jobs),
               "--device", args.device, "--engine", engine]
    if args.train_options:
        command += ["--train-options", args.train_options]
    start = time.perf_counter()
    with (folder / "study.log").open("w") as log:
        result = subprocess.run(command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"the {engine} study failed (exit {result.returncode}): see {folder / 'study.log'}")
    return seconds


def results(args: argparse.Namespace, folder: Path):
    import mlflow

    from imbadv.core.data import dataset_name
    from imbadv.tracking.results import load_results

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return load_results(dataset_name(args.data), args.preset, with_confusions=False)


def compare(first, second) -> tuple[int, int, int, int]:
    """(Table 1 cells equal, cells present, evaluation metrics equal, metrics compared)."""
    from imbadv.report.analysis import table1
    from imbadv.report.cells import TABLE1_CELLS

    cells_equal = cells = 0
    for row_a, row_b in zip(table1(first), table1(second), strict=True):
        for cell in TABLE1_CELLS:
            a, b = row_a[cell.column].values, row_b[cell.column].values
            if all(math.isnan(v) for v in a + b):
                continue  # a class the study did not run
            cells += 1
            cells_equal += a == b
    metrics_equal = metrics = 0
    for evaluation in first.evaluations:
        other = second.find(evaluation.seed, evaluation.eps, evaluation.sampling, evaluation.class_id,
                            evaluation.source)
        for name, value in evaluation.metrics.items():
            metrics += 1
            metrics_equal += other is not None and other.metrics.get(name) == value
    return cells_equal, cells, metrics_equal, metrics


def main() -> None:
    args = arguments()
    from imbadv.core.data import load_dataset

    load_dataset(args.data, args.cache_dir)  # decoded once, before any timing
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        seconds: dict[str, list[float]] = {engine: [] for engine in ENGINES}
        for round_ in range(args.rounds):
            order = ENGINES if round_ % 2 == 0 else ENGINES[::-1]
            for engine in order:
                seconds[engine].append(run_study(args, engine, root / f"{engine}-{round_}"))
                print(f"round {round_ + 1}: {engine} {seconds[engine][-1]:.1f} s", flush=True)
        cells_equal, cells, metrics_equal, metrics = compare(results(args, root / "isolated-0"),
                                                             results(args, root / "shared-0"))
    base = statistics.median(seconds["isolated"])
    print(f"\nstudy: preset {args.preset}, classes {args.classes}, seeds {args.seeds}, jobs {args.jobs}, "
          f"device {args.device}, train options {args.train_options or 'none'}, {args.rounds} round(s)")
    print(f"{'engine':<10} {'wall s':>8} {'speed-up':>9}")
    for engine in ENGINES:
        median = statistics.median(seconds[engine])
        print(f"{engine:<10} {median:>8.1f} {base / median:>8.2f}x")
    print(f"Table 1 cells equal: {cells_equal} of {cells}; evaluation metrics equal: {metrics_equal} of {metrics}")


if __name__ == "__main__":
    main()
