"""One FGSM gradient pass over a test set, kept for every eps and direction (section 3.2).

FGSM moves each pixel by eps along the sign of the loss gradient at the clean image, so the sign
and the clean logits of one pass serve an attack at any eps, ascent or descent: the adversarial
images are then one elementwise step, equal to the ones `imbadv.core.attacks.fgsm` crafts. The
sign (-1, 0 or 1 per pixel) is kept as two bit masks: 2 bits a pixel, 7.7 MB for CIFAR-10's
10,000 test images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imbadv.config import AttackConfig
from imbadv.core.attacks import fgsm_step, gradient_sign
from imbadv.core.inference import to_unit


@dataclass(frozen=True)
class GradientPass:
    """The sign of the attack loss's input gradient and the clean logits, for N images."""

    positive: np.ndarray  # packed bits: sign == 1, over the (N, 3, H, W) elements in order
    negative: np.ndarray  # packed bits: sign == -1
    shape: tuple[int, ...]
    logits: torch.Tensor  # (N, classes) float32, from the pass's forward

    @classmethod
    def from_sign(cls, sign: torch.Tensor, logits: torch.Tensor) -> GradientPass:
        flat = sign.detach().to("cpu", torch.int8).contiguous().view(-1).numpy()
        return cls(np.packbits(flat > 0), np.packbits(flat < 0), tuple(sign.shape), logits)

    def sign(self, device: torch.device) -> torch.Tensor:
        """The sign as float32 (N, 3, H, W) on `device`: exactly `grad.sign()` of the pass."""
        count = int(np.prod(self.shape))
        values = (np.unpackbits(self.positive, count=count).astype(np.int8)
                  - np.unpackbits(self.negative, count=count).astype(np.int8))
        return torch.from_numpy(values).view(self.shape).to(device).float()

    def adversarial(self, images: torch.Tensor, config: AttackConfig) -> torch.Tensor:
        """FGSM images for uint8 `images` (the pass's own, in order) at `config`'s eps and direction."""
        return fgsm_step(to_unit(images), self.sign(images.device), config)


def gradient_pass(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
                  precision: str, batch_size: int,
                  progress: Callable[[range], Iterable[int]] = iter) -> GradientPass:
    """The FGSM gradient of `config`'s loss and labels over uint8 `images` (N, 3, H, W), in batches
    of `batch_size` (the mean loss is per batch, so the batch is part of what the pass computes);
    `progress` wraps the batches' start indices (a progress bar)."""
    signs, logits = [], []
    for start in progress(range(0, len(images), batch_size)):
        sign, batch_logits = gradient_sign(model, to_unit(images[start:start + batch_size]),
                                           labels[start:start + batch_size], config, precision)
        signs.append(sign.to(torch.int8))
        logits.append(batch_logits)
    return GradientPass.from_sign(torch.cat(signs), torch.cat(logits))
