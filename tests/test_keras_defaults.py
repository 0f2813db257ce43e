"""Keras 2 defaults (the authors' stack): glorot_uniform kernels, zero biases, RMSprop eps 1e-8, and
training on every sampled image without a hold-out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from imbadv.config import ConfigError, resolve_train_config
from imbadv.core.model import VGG, VGGSpec, keras_init_
from imbadv.core.sampling import sample_split
from imbadv.core.trainer import train
from imbadv.core.trainer import initial_network

SPEC = VGGSpec(num_classes=10, width=16, dense_units=64)


def _glorot_bound(layer: nn.Module) -> float:
    receptive = layer.weight[0, 0].numel() if layer.weight.dim() > 2 else 1
    fan_in, fan_out = layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def test_keras_init_draws_glorot_uniform_kernels_and_zero_biases(one_thread):
    torch.manual_seed(0)
    model = keras_init_(VGG(SPEC))
    for layer in _layers(model):
        bound = _glorot_bound(layer)
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
        assert torch.count_nonzero(layer.bias) == 0
    torch.manual_seed(0)
    ratios = [_glorot_bound(layer) / layer.weight.abs().max().item() for layer in _layers(VGG(SPEC))]
    assert sum(1.4 <= r <= 2.5 for r in ratios) >= len(ratios) // 2  # torch's default bound is much smaller


def test_the_train_job_starts_from_keras_init_unless_asked_for_torchs(one_thread):
    keras = initial_network(resolve_train_config(preset="smoke"), 10)
    torch_default = initial_network(resolve_train_config(preset="smoke", init="torch"), 10)
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in _layers(keras))
    assert all(torch.count_nonzero(layer.bias) > 0 for layer in _layers(torch_default))
    assert resolve_train_config().optimizer_eps == 1e-8  # Keras 2.0.0-2.1.2
    with pytest.raises(ConfigError, match="unknown --init"):
        resolve_train_config(init="he")


def test_val_fraction_zero_trains_on_every_sampled_image_for_every_epoch(one_thread):
    labels = np.repeat(np.arange(10), 30)
    config = resolve_train_config(preset="smoke", majority_count=20, ratio=4, sampling="under",
                                  class_id=3, val_fraction=0, epochs=3, patience=1, stopping="val-loss")
    split = sample_split(labels, config, 10)
    assert len(split.val) == 0 and len(split.train) == 9 * 20 + 5
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(split.train), 3, 32, 32), dtype=torch.uint8, generator=generator)
    model = VGG(VGGSpec(num_classes=10, width=4, dense_units=16))
    logged = []
    result = train(model, images, torch.from_numpy(labels[split.train]), images[:0], torch.zeros(0, dtype=torch.long),
                   config, on_epoch=lambda m: logged.append(m.as_dict()))
    assert len(result.history) == 3 and not result.stopped_early and result.best_epoch == 3
    assert all("val_loss" not in m and "train_loss" in m for m in logged)
    with pytest.raises(ConfigError, match="outside"):
        resolve_train_config(val_fraction=1.0)


def _plateau_run(min_delta: float, epochs: int = 6, patience: int = 2):
    labels = np.repeat(np.arange(10), 6)
    config = resolve_train_config(preset="smoke", val_fraction=0, epochs=epochs, patience=patience,
                                  min_delta=min_delta)
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    model = VGG(VGGSpec(num_classes=10, width=4, dense_units=16))
    checkpoints = []
    result = train(model, images, torch.from_numpy(labels), images[:0], torch.zeros(0, dtype=torch.long), config,
                   on_checkpoint=checkpoints.append)
    return model, result, checkpoints


def test_training_to_convergence_stops_when_the_training_loss_levels_off_and_keeps_the_last_weights(one_thread):
    """Section 3.1's 'until convergence': the default rule watches the training loss, not a hold-out."""
    assert resolve_train_config().stopping == "train-loss"
    # no fall counts as progress: epoch 1 sets the level, then `patience` epochs without progress
    model, result, checkpoints = _plateau_run(min_delta=100.0)
    assert len(result.history) == 1 + 2 and result.stopped_early and result.best_epoch == 3
    last = checkpoints[-1]["model"]
    assert all(torch.equal(value, last[name]) for name, value in model.state_dict().items())
    # every fall counts: the loss of a model fitting 60 images keeps falling, so the cap ends it
    _, result, _ = _plateau_run(min_delta=0.0, epochs=4, patience=1)
    losses = [m.train_loss for m in result.history]
    assert len(losses) == 4 and not result.stopped_early and losses == sorted(losses, reverse=True)


def test_stopping_rule_and_min_delta_are_checked():
    with pytest.raises(ConfigError, match="unknown --stopping 'loss': use train-loss or val-loss"):
        resolve_train_config(stopping="loss")
    with pytest.raises(ConfigError, match=r"min delta -1\.0 is negative"):
        resolve_train_config(min_delta=-1.0)
