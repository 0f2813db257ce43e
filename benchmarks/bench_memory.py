"""Peak resident memory of evaluating the whole test set, against loading the data alone (goal: <= 2 GB).

Result (--preset cpu on the cpu study's store): `imbadv evaluate` on all 10,000 test images peaks at 1,435 MB,
against 689 MB for importing torch and loading the dataset alone.

Each is measured as its own process, whose peak RSS the kernel reports when it ends (wait4):
the baseline imports torch and loads the dataset; the evaluation is `imbadv evaluate` (FGSM over
all test images, the ONNX cross-check and the artifacts). With no --tracking-uri, a model of
--preset is first trained into a temporary store.

    python benchmarks/bench_memory.py [--preset smoke] [--batch 500] [--tracking-uri sqlite:///study/mlflow.db]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_DATA

GOAL_MB = 2048


def peak_rss_mb(command: list[str], env: dict[str, str], cwd: str) -> float:
    """Run `command` and return its peak resident memory in MB (Linux reports ru_maxrss in KB)."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("IMBADV_TEST_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--batch", type=int, default=500, help="attack batch (imbadv evaluate --batch-size)")
    parser.add_argument("--tracking-uri", default=None, help="a store that already holds the --preset models")
    parser.add_argument("--cache-dir", default=os.environ.get("IMBADV_CACHE", str(Path.home() / ".cache" / "imbadv")))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking_uri or f"sqlite:///{tmp}/mlflow.db",
               "IMBADV_CACHE": args.cache_dir}
        common = ["--preset", args.preset, "--data", args.data, "--device", "cpu"]
        if args.tracking_uri is None:
            subprocess.run([sys.executable, "-m", "imbadv", "train", *common], env=env, cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
        load = ("import torch; from imbadv.core.data import load_dataset; "
                f"d = load_dataset({args.data!r}, {args.cache_dir!r}); torch.from_numpy(d.test_images)")
        baseline = peak_rss_mb([sys.executable, "-c", load], env, tmp)
        evaluate = peak_rss_mb([sys.executable, "-m", "imbadv", "evaluate", *common, "--batch-size", str(args.batch)],
                               env, tmp)

    print(f"\nPeak resident memory, whole test set, preset {args.preset}, attack batch {args.batch}")
    print(f"{'process':55} {'peak RSS MB':>12} {'vs goal ' + str(GOAL_MB) + ' MB':>16}")
    for name, mb in (("import torch + load the dataset (baseline)", baseline),
                     ("imbadv evaluate (FGSM, ONNX cross-check, artifacts)", evaluate)):
        print(f"{name:55} {mb:12.0f} {mb / GOAL_MB:15.2f}x")
    print(f"evaluation over baseline: {evaluate / baseline:.2f}x; goal {'met' if evaluate <= GOAL_MB else 'NOT met'}")


if __name__ == "__main__":
    main()
