"""What each fidelity choice changes: the same study under one changed option at a time.

Each variant is one `imbadv reproduce` in its own store under `--out` (a rerun reuses what is
finished there); the attack-loss variant evaluates the defaults' trained models again. Prints one
markdown table: Table 1's five column means over the study's classes (accuracy of the target
class under FGSM, %), the under-sampled models' clean accuracy on their own class, and the black-box
attack's success rate on the under-sampled models (among the images they had right), beside the
paper's means over the same classes.

    python benchmarks/ablation.py --preset cpu --classes 3 --jobs 2 --out ablation/
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_DATA = SHARED / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"

# name -> (store, reproduce options): one changed choice each, against the defaults.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "defaults (own init, Keras init, train-loss stopping, logits loss)": ("defaults", ()),
    "early stopping on the held-out loss": ("val-loss", ("--train-options", "stopping=val-loss")),
    "shared initialisation": ("shared-init", ("--shared-init",)),
    "torch initialisation": ("torch-init", ("--train-options", "init=torch")),
    "Keras attack loss (same models as the defaults)": ("defaults", ("--attack-loss", "keras")),
    "imbadv before December 2026": ("old-defaults", (
        "--shared-init", "--train-options", "init=torch,optimizer_eps=1e-7,stopping=val-loss")),
}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("IMBADV_TEST_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--classes", default="3")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="ablation", help="folder of the variants' stores")
    parser.add_argument("--only", help="comma-separated store names to run (default: all)")
    return parser.parse_args()


def _env(store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}


def run_variant(args: argparse.Namespace, store: Path, options: tuple[str, ...]) -> float:
    store.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "imbadv", "reproduce", "--preset", args.preset, "--data", args.data,
               "--classes", args.classes, "--seeds", str(args.seeds), "--jobs", str(args.jobs),
               "--device", args.device, *options]
    start = time.perf_counter()
    with (store / "study.log").open("a") as log:
        result = subprocess.run(command, env=_env(store), cwd=store, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"{' '.join(options) or 'the defaults'} failed (exit {result.returncode}): see {store / 'study.log'}")
    return time.perf_counter() - start


def summary(args: argparse.Namespace, store: Path, attack_loss: str) -> dict[str, float]:
    """Column means (%), the under-sampled models' clean accuracy on their class and the black-box
    success rate on them, from the variant's store."""
    import mlflow

    from imbadv.core.data import dataset_name
    from imbadv.report.analysis import TABLE1_EPS, column_means, table1, with_results
    from imbadv.tracking.results import load_results

    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    results = load_results(dataset_name(args.data), args.preset, with_confusions=False, attack_loss=attack_loss)
    rows = table1(results)
    means = {column: 100 * estimate.mean for column, estimate in column_means(rows, len(results.seeds)).items()}
    classes = with_results(rows, "whitebox_undersample")
    for name, metric, source in (("clean_under", "clean_acc", "self"), ("success_blackbox_under", "success_rate",
                                                                         "balanced")):
        values = [e.per_class(metric, e.class_id) for e in results.evaluations
                  if e.sampling == "under" and e.source == source and e.class_id in classes and e.eps == TABLE1_EPS]
        means[name] = 100 * sum(values) / len(values) if values else math.nan
    return means


def main() -> None:
    args = arguments()
    from imbadv.config import parse_class_id
    from imbadv.report.analysis import COLUMNS, paper_table

    root = Path(args.out).resolve()
    only = set(args.only.split(",")) if args.only else None
    table = []
    for name, (store, options) in VARIANTS.items():
        if only is not None and store not in only:
            continue
        seconds = run_variant(args, root / store, options)
        loss = options[1] if options[:1] == ("--attack-loss",) else "logits"
        table.append((name, summary(args, root / store, loss), seconds))
        print(f"{name}: {seconds:.0f} s", flush=True)
    columns = [column for column, _, _ in COLUMNS]
    print(f"\npreset {args.preset}, classes {args.classes}, {args.seeds} seed(s); accuracy of the target class "
          "under FGSM eps 0.01 (%)\n")
    print("| variant | " + " | ".join(columns) + " | clean, under-sampled class | black-box success, under |")
    print("|---" * (len(columns) + 3) + "|")
    for name, means, _ in table:
        values = [means[c] for c in columns] + [means["clean_under"], means["success_blackbox_under"]]
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    classes = {parse_class_id(c) for c in args.classes.split(",")} if args.classes != "all" else set(range(10))
    paper = [row for row in paper_table() if int(row["class_id"]) in classes]
    print("| the paper | " + " | ".join(f"{100 * sum(float(r[c]) for r in paper) / len(paper):.1f}"
                                       for c in columns) + " | | |")


if __name__ == "__main__":
    main()
