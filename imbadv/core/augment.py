"""Training-image augmentation on the device, vectorised over the batch.

`keras`: the Keras CIFAR-10 example's `ImageDataGenerator(width_shift_range=0.1,
height_shift_range=0.1, horizontal_flip=True)` (keras-team/keras 2.0.x `examples/cifar10_cnn.py`,
the example whose RMSprop and learning rate the paper's section 3.1 uses): each image is shifted by
up to 10% of its side in each direction, the border filled with the nearest edge pixel, then
flipped left-right with probability 1/2. Keras shifts by a real number of pixels through
`scipy.ndimage.affine_transform(order=0, mode="nearest")`, which reads the pixel at the shifted
coordinate rounded half up, so a shift is the integer floor(u * side + 0.5), u ~ U(-0.1, 0.1).

`crop`: zero-pad by 4 pixels, crop back to the image size at a random offset, flip left-right with
probability 1/2 (the common CIFAR recipe; not the paper's).

The random draws of a whole epoch are made at once on the CPU generator and moved to the device
once, so a batch costs one gather and no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imbadv.config import Augment

KERAS_SHIFT_RANGE = 0.1  # width_shift_range = height_shift_range in cifar10_cnn.py
CROP_PADDING = 4


@dataclass(frozen=True)
class EpochDraws:
    """Per-image shifts (rows, cols) and flips for one epoch, indexed by position in the epoch."""

    row_shift: torch.Tensor  # (N,) int64
    col_shift: torch.Tensor  # (N,) int64
    flip: torch.Tensor  # (N,) bool
    nearest: bool  # fill with the nearest edge pixel (keras) or zeros (crop)

    def batch(self, positions: slice) -> EpochDraws:
        return EpochDraws(self.row_shift[positions], self.col_shift[positions], self.flip[positions], self.nearest)


def draw_epoch(kind: Augment, count: int, side: int, generator: torch.Generator, device: torch.device) -> EpochDraws:
    """The random shifts and flips of `count` images of `side` x `side` pixels."""
    if kind == "keras":
        shifts = (torch.rand((2, count), generator=generator, dtype=torch.float64) * 2 - 1) * KERAS_SHIFT_RANGE
        shifts = torch.floor(shifts * side + 0.5).long()
    elif kind == "crop":
        shifts = torch.randint(-CROP_PADDING, CROP_PADDING + 1, (2, count), generator=generator)
    else:
        raise ValueError(f"unknown augmentation {kind!r}: use keras or crop")
    flip = torch.rand(count, generator=generator) < 0.5
    return EpochDraws(shifts[0].to(device), shifts[1].to(device), flip.to(device), nearest=kind == "keras")


def shift_and_flip(images: torch.Tensor, draws: EpochDraws) -> torch.Tensor:
    """`images` (N, C, H, W) with image n read at (i + row_shift[n], j + col_shift[n]), then flipped
    left-right where `flip[n]`; pixels read from outside the image are its nearest edge pixel or 0."""
    n, channels, height, width = images.shape
    rows = torch.arange(height, device=images.device)[None, :] + draws.row_shift[:, None]  # (N, H)
    cols = torch.arange(width, device=images.device)[None, :] + draws.col_shift[:, None]  # (N, W)
    cols = torch.where(draws.flip[:, None], cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]  # (N, H, W)
    rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    flat = rows[:, :, None] * width + cols[:, None, :]  # (N, H, W) source pixel of each output pixel
    out = images.flatten(2).gather(2, flat.flatten(1)[:, None, :].expand(n, channels, -1)).view_as(images)
    if not draws.nearest:
        out = out * inside[:, None].to(out.dtype)
    return out
