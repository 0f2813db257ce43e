"""The device augmentation against direct per-image references, and the paper-aug preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from imbadv.config import ConfigError, resolve_train_config
from imbadv.study.config import groupable
from imbadv.core.augment import EpochDraws, draw_epoch, shift_and_flip
from imbadv.core.model import VGG, VGGSpec


def _images(count: int, side: int = 32) -> torch.Tensor:
    return torch.rand((count, 3, side, side), generator=torch.Generator().manual_seed(0))


def _keras_transform(image: np.ndarray, row_shift: float, col_shift: float, flip: bool) -> np.ndarray:
    """Keras 2.0's ImageDataGenerator.random_transform for a pure shift: scipy's affine_transform of
    each channel at order 0 with nearest fill, then flip_axis on the columns."""
    out = np.stack([ndimage.affine_transform(channel, np.eye(2), offset=(row_shift, col_shift), order=0,
                                             mode="nearest", cval=0.0) for channel in image])
    return out[:, :, ::-1] if flip else out


def test_keras_shifts_equal_scipys_nearest_affine_transform_of_each_image():
    images = _images(8)
    side = images.shape[-1]
    u = torch.tensor([[-0.0999, -0.062, -0.03, 0.0, 0.011, 0.047, 0.078, 0.0999],
                      [0.093, -0.0999, 0.02, -0.044, 0.066, -0.017, 0.0, 0.085]], dtype=torch.float64)
    flips = torch.tensor([False, True, False, True, True, False, False, True])
    shifts = torch.floor(u * side + 0.5).long()  # what draw_epoch makes of Keras' real-valued shift
    out = shift_and_flip(images, EpochDraws(shifts[0], shifts[1], flips, nearest=True))
    assert {int(v) for v in shifts.flatten()} >= {-3, 3, 0}
    for n in range(len(images)):
        reference = _keras_transform(images[n].numpy(), float(u[0, n] * side), float(u[1, n] * side), bool(flips[n]))
        assert np.array_equal(out[n].numpy(), reference), f"image {n}"


def test_crop_equals_padding_and_slicing_each_image():
    images = _images(6)
    rows, cols = torch.tensor([-4, -1, 0, 2, 4, 3]), torch.tensor([4, 0, -3, 1, -4, 2])
    flips = torch.tensor([True, False, True, False, False, True])
    out = shift_and_flip(images, EpochDraws(rows, cols, flips, nearest=False))
    padded = F.pad(images, (4, 4, 4, 4))
    for n in range(len(images)):
        y, x = int(rows[n]) + 4, int(cols[n]) + 4
        reference = padded[n, :, y:y + 32, x:x + 32]
        assert torch.equal(out[n], reference.flip(-1) if flips[n] else reference), f"image {n}"


def test_an_epochs_draws_cover_keras_range_and_flip_about_half():
    draws = draw_epoch("keras", 20000, 32, torch.Generator().manual_seed(1), torch.device("cpu"))
    for shift in (draws.row_shift, draws.col_shift):
        assert set(shift.unique().tolist()) == set(range(-3, 4))  # floor(U(-3.2, 3.2) + 0.5)
    assert 0.48 < draws.flip.float().mean().item() < 0.52
    again = draw_epoch("keras", 20000, 32, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(again.row_shift, draws.row_shift) and torch.equal(again.flip, draws.flip)
    batch = draws.batch(slice(32, 64))
    assert torch.equal(batch.col_shift, draws.col_shift[32:64])


def test_block_dropout_layers_exist_only_when_asked_and_are_off_in_evaluation():
    plain = VGG(VGGSpec(width=4, dense_units=16))
    regularised = VGG(VGGSpec(width=4, dense_units=16, block_dropout=0.25, dense_dropout=0.5))
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.25 for m in regularised.features) == 3
    assert [m.p for m in regularised.classifier if isinstance(m, torch.nn.Dropout)] == [0.0, 0.5]
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.features)
    # without block dropout the layers keep their indices, so models saved before it load as they were
    assert list(VGG(VGGSpec(width=4, dense_units=16, dense_dropout=0.5)).state_dict()) == list(plain.state_dict())
    regularised.load_state_dict(dict(zip(regularised.state_dict(), plain.state_dict().values(), strict=True)))
    x = _images(4)
    regularised.eval()
    assert torch.equal(regularised(x), plain.eval()(x))  # dropout is off in evaluation


def test_paper_aug_is_the_paper_with_keras_augmentation_and_dropout():
    config = resolve_train_config(preset="paper-aug")
    paper = resolve_train_config(preset="paper")
    assert (config.augment, config.block_dropout, config.dense_dropout) == ("keras", 0.25, 0.5)
    assert (config.width, config.lr, config.batch_size, config.epochs) == (paper.width, paper.lr, paper.batch_size,
                                                                            paper.epochs)
    assert not groupable("paper-aug") and not groupable("paper-aug-fast") and groupable("paper")
    with pytest.raises(ConfigError, match="unknown --augment 'flip': use none, keras or crop"):
        resolve_train_config(augment="flip")
    with pytest.raises(ConfigError, match=r"block-dropout 1\.0 is outside"):
        resolve_train_config(block_dropout=1.0)


def test_training_with_keras_augmentation_is_reproducible_and_changes_the_model(one_thread):
    from imbadv.core.trainer import train

    labels = torch.arange(10).repeat(6)
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def weights(augment: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = VGG(VGGSpec(width=4, dense_units=16, block_dropout=0.25, dense_dropout=0.5))
        config = resolve_train_config(preset="smoke", augment=augment, val_fraction=0, epochs=2)
        train(model, images, labels, images[:0], labels[:0], config)
        return list(model.state_dict().values())

    first, again, plain = weights("keras"), weights("keras"), weights("none")
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, plain, strict=True))
