"""Shared helpers of the benchmarks: test images, a model, timing and a printed table."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from imbadv.core.data import load_dataset
from imbadv.core.model import VGG, VGGSpec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_DATA = SHARED / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


def arguments(description: str, **defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=os.environ.get("IMBADV_TEST_DATA", str(DEFAULT_DATA)),
                        help="dataset (as for imbadv --data)")
    parser.add_argument("--width", type=int, default=defaults.get("width", 16), help="VGG width (cpu preset: 16)")
    parser.add_argument("--batch", type=int, default=defaults.get("batch", 500), help="images per batch")
    parser.add_argument("--images", type=int, default=defaults.get("images", 2000), help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds; each round runs every method once (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--cache-dir", default=os.environ.get("IMBADV_CACHE", str(Path.home() / ".cache" / "imbadv")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def test_images(args: argparse.Namespace, train: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 labels from the dataset, spread over the classes."""
    dataset = load_dataset(args.data, args.cache_dir)
    if train:
        images, labels = dataset.train_images, dataset.train_labels
    else:
        images, labels = dataset.test_images, dataset.test_labels
    order = np.random.default_rng(0).permutation(len(images))[:args.images]
    return images[order], labels[order]


def model(width: int, seed: int = 0) -> VGG:
    torch.manual_seed(seed)
    return VGG(VGGSpec(width=width)).eval()


def timed(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per method: one warm-up call each, then `repeats` rounds calling every method in turn.

    Interleaving the rounds exposes every method to the same drift in machine speed, so the ratios
    hold better than those of one method's repeats after another's.
    """
    for run in methods.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_table(title: str, images: int, seconds: dict[str, float], baseline: str) -> None:
    print(f"\n{title}  ({images} images per pass, median; {torch.get_num_threads()} threads, "
          f"torch {torch.__version__})")
    print(f"{'method':52} {'images/s':>10} {'vs ' + baseline:>16}")
    for name, value in seconds.items():
        print(f"{name:52} {images / value:10.0f} {seconds[baseline] / value:15.2f}x")
