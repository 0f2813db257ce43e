"""Several trainings at once: total training throughput of N processes sharing the device, against one.

Result (2 CPU cores, VGG width 16, batch 64, --jobs 1,2 --images 4096 --repeats 3): two processes of one thread
train 1.11x the images/s of one process of two threads in the default layout, 0.99x in channels_last (1,726 img/s
for one process). Not yet run on a GPU.

Each process trains its own model (the imbadv trainer, one epoch) on the same images, as the
study's `--jobs N` does; on a CPU the cores are split between the processes. Every process first
runs a warm-up epoch (cuDNN autotuning, torch.compile), then all start the timed epoch together.
The ratio says how much more of a study's training one device does with N jobs than with one.

    python benchmarks/bench_jobs.py [--device cpu|cuda] [--jobs 1,2,4] [--width 16] [--batch 64]
                                    [--images 2048] [--precision fp32] [--channels-last] [--compile]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import statistics
import time

import torch
from common import DEFAULT_DATA, model, print_table, test_images

from imbadv.config import TrainConfig
from imbadv.core.inference import resolve_device
from imbadv.core.trainer import train


def _worker(args: argparse.Namespace, threads: int, start: mp.Barrier, done: mp.Queue) -> None:
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    images, labels = test_images(args, train=True)
    x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    config = TrainConfig(preset="cpu", width=args.width, batch_size=args.batch, epochs=1, patience=1,
                         precision=args.precision, channels_last=args.channels_last, torch_compile=args.compile)
    network = model(args.width).to(device)
    train(network, x, y, x[:args.batch], y[:args.batch], config)  # warm-up
    for round_ in range(args.repeats):
        start.wait()
        train(network, x, y, x[:args.batch], y[:args.batch], dataclasses.replace(config, seed=round_ + 1))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        done.put(round_)


def run_jobs(args: argparse.Namespace, jobs: int) -> float:
    """Median wall seconds of a round: `jobs` processes start an epoch together, until the last ends."""
    context = mp.get_context("spawn")
    start, done = context.Barrier(jobs + 1), context.Queue()
    threads = max(1, args.threads // jobs) if args.device == "cpu" else args.threads
    workers = [context.Process(target=_worker, args=(args, threads, start, done)) for _ in range(jobs)]
    for worker in workers:
        worker.start()
    walls = []
    for _ in range(args.repeats):
        start.wait()
        began = time.perf_counter()
        for _ in workers:
            done.get()
        walls.append(time.perf_counter() - began)
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a training process failed (exit {worker.exitcode})")
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("IMBADV_TEST_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--cache-dir", default=os.environ.get("IMBADV_CACHE", os.path.expanduser("~/.cache/imbadv")))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--jobs", default="1,2", help="comma-separated process counts; the first is the baseline")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048, help="training images per process")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the processes")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.jobs.split(",")]
    wall = {n: run_jobs(args, n) for n in counts}
    # images/s of all processes together, so that print_table's ratio is the throughput gain
    seconds = {f"{n} process(es) at once": wall[n] * counts[0] / n for n in counts}
    print_table(f"Training throughput of N processes, {args.device}, VGG width {args.width}, batch "
                f"{args.batch}, {args.precision}{', channels_last' if args.channels_last else ''}"
                f"{', compiled' if args.compile else ''}", args.images * counts[0], seconds,
                f"{counts[0]} process(es) at once")


if __name__ == "__main__":
    main()
