"""The adapted VGG of the paper (section 3.1).

Three conv blocks of 2, 3 and 3 conv 3x3 + ReLU layers, each ending in a 2x2 max pool, then one
dense layer of 512 + ReLU and the class output. Input is (N, 3, 32, 32) pixels in [0, 1]; the
per-channel normalisation is the model's first layer, so attack budgets are in pixel units.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from imbadv.config import CIFAR10_CLASSES

# CIFAR-10 training-set channel statistics of [0, 1] pixels.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
BLOCK_LAYERS = (2, 3, 3)  # section 3.1
IMAGE_SIZE = 32


@dataclass(frozen=True)
class VGGSpec:
    """Everything needed to rebuild the network; stored beside its weights."""

    num_classes: int = 10
    width: int = 64
    dense_units: int = 512
    dropout: float = 0.0  # before and after the dense layer
    block_dropout: float = 0.0  # after each pooled block
    dense_dropout: float = 0.0  # after the dense layer only
    batch_norm: bool = False
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VGGSpec:
        values = dict(values)
        values["mean"] = tuple(values["mean"])
        values["std"] = tuple(values["std"])
        return cls(**values)


def input_statistics(class_names: Sequence[str], train_mean: Sequence[float],
                     train_std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The Normalize layer's (mean, std) for a dataset: CIFAR-10 (its ten class names, in order: the
    torchvision download and every image-folder copy) keeps CIFAR10_MEAN and CIFAR10_STD, so its models
    keep the weights and reuse they had; any other dataset its own training set's per-channel
    statistics, `train_mean` and `train_std` (0-1 scale)."""
    if tuple(class_names) == CIFAR10_CLASSES:
        return CIFAR10_MEAN, CIFAR10_STD
    return tuple(float(m) for m in train_mean), tuple(float(s) for s in train_std)


class Normalize(nn.Module):
    """(x - mean) / std per channel, as buffers so that they travel with the weights and to ONNX."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class VGG(nn.Module):
    """Adapted VGG: (N, 3, 32, 32) pixels in [0, 1] -> (N, num_classes) logits."""

    def __init__(self, spec: VGGSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = [Normalize(spec.mean, spec.std)]
        in_channels = 3
        for block, depth in enumerate(BLOCK_LAYERS):
            out_channels = spec.width * 2**block
            for _ in range(depth):
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
                if spec.batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2))
            if spec.block_dropout:  # only then: a model without it keeps its layers' indices
                layers.append(nn.Dropout(spec.block_dropout))
        self.features = nn.Sequential(*layers)
        side = IMAGE_SIZE // 2 ** len(BLOCK_LAYERS)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(spec.dropout),
            nn.Linear(in_channels * side * side, spec.dense_units),
            nn.ReLU(inplace=True),
            nn.Dropout(1 - (1 - spec.dropout) * (1 - spec.dense_dropout)),  # both: one layer keeping the product
            nn.Linear(spec.dense_units, spec.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def keras_init_(model: nn.Module) -> nn.Module:
    """Keras 2's defaults for Conv2D and Dense, in place: glorot_uniform kernels, zero biases.

    Glorot's bound sqrt(6 / (fan_in + fan_out)) counts the receptive field in both fans, as Keras
    does (fan_in = in_channels * 3 * 3, fan_out = out_channels * 3 * 3 for a 3x3 conv).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def weights_sha256(network: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, shapes and float32 values, in order)."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
