"""The study on Ray against the local executor: wall time of the same study, side by side in one run.

Runs the smoke study of one class (3 trainings, 5 evaluations) three ways, each in a fresh store:
the local executor with --jobs 1 (one process of all the cores), a one-node Ray cluster of one CPU,
and a two-node Ray cluster of one CPU per node (both on 127.0.0.1, `ray.cluster_utils.Cluster`).
Every Ray step asks for one CPU (--jobs 2 on a 2-core machine), so two nodes can run two at once.
Both Ray runs track to an `mlflow server` on 127.0.0.1, the local one to a SQLite store. Prints each
wall time (process start to exit; cluster and server start excluded) and the ratios.

    python benchmarks/bench_cluster.py [--preset smoke] [--classes 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_DATA = SHARED / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("IMBADV_TEST_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--classes", default="3")
    parser.add_argument("--cache-dir", default=os.environ.get("IMBADV_CACHE", str(Path.home() / ".cache" / "imbadv")))
    return parser.parse_args()


def run_study(args: argparse.Namespace, folder: Path, uri: str, *extra: str) -> float:
    """Seconds of one `imbadv reproduce` tracking to `uri`, run in `folder`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env |= {"MLFLOW_TRACKING_URI": uri, "IMBADV_CACHE": args.cache_dir}
    # the store's tables are made before the clock starts
    subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient; "
                    "MlflowClient().search_experiments(max_results=1)"], env=env, check=True, capture_output=True)
    command = [sys.executable, "-m", "imbadv", "reproduce", "--preset", args.preset, "--data", args.data,
               "--classes", args.classes, "--device", "cpu", *extra]
    start = time.perf_counter()
    with (folder / "study.log").open("w") as log:
        result = subprocess.run(command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(extra)} failed (exit {result.returncode}): see {folder / 'study.log'}")
    return seconds


def on_cluster(args: argparse.Namespace, folder: Path, nodes: int) -> float:
    """The study on a local Ray cluster of `nodes` nodes of one CPU, tracking to an `mlflow server` on
    127.0.0.1 (a sqlite store is refused on several nodes; one node uses a server too, alike)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tracking_server import TrackingServer

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    server = None
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        extra = ("--executor", "ray", "--ray-address", cluster.address, "--jobs", str(os.cpu_count() or 1))
        folder.mkdir(parents=True)
        server = TrackingServer(folder)
        server.start()
        return run_study(args, folder, server.uri, *extra)
    finally:
        if server is not None:
            server.close()
        cluster.shutdown()


def main() -> None:
    args = arguments()
    from imbadv.core.data import load_dataset

    load_dataset(args.data, args.cache_dir)  # decoded once, before any timing
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "local").mkdir()
        seconds = {"local, --jobs 1": run_study(args, root / "local", f"sqlite:///{root / 'local' / 'mlflow.db'}",
                                                "--jobs", "1"),
                   "ray, 1 node of 1 CPU": on_cluster(args, root / "ray-1", 1),
                   "ray, 2 nodes of 1 CPU": on_cluster(args, root / "ray-2", 2)}
    base = seconds["ray, 1 node of 1 CPU"]
    print(f"\nstudy: preset {args.preset}, classes {args.classes}")
    print(f"{'executor':<24} {'wall s':>8} {'vs 1 node':>10}")
    for name, value in seconds.items():
        print(f"{name:<24} {value:>8.1f} {base / value:>9.2f}x")


if __name__ == "__main__":
    main()
