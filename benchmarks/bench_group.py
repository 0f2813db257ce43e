"""Training M models one after another against M models side by side in a group (imbadv.core.group):
one epoch each over its own images, at the same batch, threads and device.

Prints training images/s of both and the group's ratio to the loop; `--json PATH` writes them as
JSON too (gpu_study.sh's preflight reads it to choose whether the study trains groups). The `cpu`
preset's model is the default; pass --width 64 --batch 32 for the paper's (on a GPU: --device cuda
--precision bf16).

    python benchmarks/bench_group.py --models 4 --images 2048 [--width 16 --batch 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import torch

from imbadv.config import resolve_train_config
from imbadv.core.group import TrainingGroup
from imbadv.core.model import VGG, VGGSpec
from imbadv.core.trainer import train


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--images", type=int, default=2048, help="training images per model")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each timing both (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="also write the images/s and the ratio to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = resolve_train_config(preset="paper", width=args.width, batch_size=args.batch, epochs=1,
                                  precision=args.precision, device=args.device)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device),
             torch.randint(0, 10, (args.images,), generator=generator).to(device)) for _ in range(args.models)]
    val = (data[0][0][:64], data[0][1][:64])

    def models() -> list[VGG]:
        return [VGG(VGGSpec(num_classes=10, width=args.width)).to(device) for _ in range(args.models)]

    def loop() -> None:
        for model, (x, y) in zip(models(), data, strict=True):
            train(model, x, y, *val, config)

    def grouped() -> None:
        group = TrainingGroup(args.models)

        def member(model: VGG, x: torch.Tensor, y: torch.Tensor) -> None:
            try:
                train(model, x, y, *val, config, group=group)
            finally:
                group.release()

        threads = [threading.Thread(target=member, args=(m, *d)) for m, d in zip(models(), data, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    seconds: dict[str, list[float]] = {"loop": [], "group": []}
    for _ in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, run in (("loop", loop), ("group", grouped)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    images = args.models * args.images
    rates = {name: images / statistics.median_high(timed[1:]) for name, timed in seconds.items()}
    print(f"{args.models} models x {args.images} images, width {args.width}, batch {args.batch}, {args.precision}, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, rate in rates.items():
        print(f"{name:<6} {rate:>9.0f} img/s  {rate / rates['loop']:.2f}x")
    if args.json:
        summary = {"models": args.models, "images": args.images, "width": args.width, "batch": args.batch,
                   "precision": args.precision, "device": str(device), "loop_images_per_s": round(rates["loop"], 1),
                   "group_images_per_s": round(rates["group"], 1),
                   "group_vs_loop": round(rates["group"] / rates["loop"], 3)}
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
