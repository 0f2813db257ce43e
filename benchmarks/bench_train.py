"""Our training epoch against a plain PyTorch loop: torchvision-style dataset, DataLoader, ToTensor + Normalize.

Result (2 CPU cores, VGG width 16, batch 64, --images 2048 --repeats 5): against the plain loop's 1,200 img/s,
the imbadv trainer in fp32 trains 1.14x the images/s (the in-memory ceiling: 1.15x), fp32 channels_last (the
cpu preset) 1.38x, bf16 1.73x, bf16 channels_last 2.13x. torch.compile of the channels_last step is slower
here (0.76x eager at one thread). Details: benchmarks/README.md.

Same model, batch, images, optimiser and threads, measured side by side in one run, fp32 unless
stated. Ours keeps the uint8 images in one tensor on the device and indexes batches there. The
second row, the same plain loop over an already normalized float tensor, is the ceiling of what
removing the input pipeline can give; the rest of a step is the model's own compute.

    python benchmarks/bench_train.py [--width 16] [--batch 64] [--images 4096]
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from common import arguments, model, print_table, test_images, timed
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from imbadv.config import TrainConfig
from imbadv.core.model import CIFAR10_MEAN, CIFAR10_STD, VGG, VGGSpec
from imbadv.core.optim import keras_rmsprop
from imbadv.core.trainer import train


class ArrayDataset(VisionDataset):
    """What torchvision's CIFAR10 does per item: uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(root="", transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]))
        self.images, self.labels = np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def main() -> None:
    args = arguments(__doc__, batch=64, images=4096)
    images, labels = test_images(args, train=True)
    config = TrainConfig(preset="cpu", width=args.width, batch_size=args.batch, lr=1e-3, epochs=1, patience=1)

    def ours(**options):
        """One epoch of imbadv's trainer with `options` (TrainConfig fields) over the cpu preset's config."""
        network = model(args.width)
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        train(network, x, y, x[:args.batch], y[:args.batch], dataclasses.replace(config, **options))

    loader = DataLoader(ArrayDataset(images, labels), batch_size=args.batch, shuffle=True, num_workers=0)

    normalized = torch.stack([loader.dataset[i][0] for i in range(len(images))])
    targets = torch.from_numpy(labels)

    def in_memory_batches():
        order = torch.randperm(len(normalized))
        for start in range(0, len(order), args.batch):
            yield normalized[order[start:start + args.batch]], targets[order[start:start + args.batch]]

    def plain_loop(batches=lambda: loader):
        torch.manual_seed(0)
        network = VGG(dataclasses.replace(VGGSpec(width=args.width), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
        optimizer, scheduler = keras_rmsprop(network.parameters(), config.lr, config.rho, config.optimizer_eps,
                                             config.decay)
        network.train()
        for xb, yb in batches():
            loss = F.cross_entropy(network(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    seconds = timed({"plain loop: DataLoader, ToTensor + Normalize": plain_loop,
                     "plain loop: normalized float tensor in memory": lambda: plain_loop(in_memory_batches),
                     "imbadv trainer, fp32": ours,
                     "imbadv trainer, fp32 channels_last (cpu preset)": lambda: ours(channels_last=True),
                     "imbadv trainer, fp32 channels_last, torch.compile":
                         lambda: ours(channels_last=True, torch_compile=True),
                     "imbadv trainer, bf16 autocast": lambda: ours(precision="bf16"),
                     "imbadv trainer, bf16 channels_last": lambda: ours(precision="bf16", channels_last=True)},
                    args.repeats)
    print_table(f"Training epoch, VGG width {args.width}, batch {args.batch}", len(images), seconds,
                "plain loop: DataLoader, ToTensor + Normalize")


if __name__ == "__main__":
    main()
