"""The training state: a checkpoint round trip through torch.save / torch.load(weights_only=True) and a resume."""

from __future__ import annotations

import dataclasses
import io

import torch

from imbadv.config import TrainConfig
from imbadv.core.model import VGG, VGGSpec
from imbadv.core.trainer import TrainState, seed_everything, train

CONFIG = TrainConfig(preset="smoke", width=4, dense_units=16, batch_size=16, lr=1e-3, epochs=3, patience=3,
                     device="cpu")


def _data() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (96,), generator=generator)
    return images[:64], labels[:64], images[64:], labels[64:]


def _model() -> VGG:
    seed_everything(0)
    return VGG(VGGSpec(num_classes=10, width=CONFIG.width, dense_units=CONFIG.dense_units))


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_resumed_training_ends_with_the_same_weights_as_an_uninterrupted_one():
    checkpoints: list[dict] = []
    whole = _model()
    result = train(whole, *_data(), CONFIG, on_checkpoint=lambda s: checkpoints.append(_round_trip(s)))
    assert [c["epochs_done"] for c in checkpoints] == [1, 2, 3]

    resumed = _model()
    again = train(resumed, *_data(), CONFIG, resume_from=checkpoints[0])
    assert [m.epoch for m in again.history] == [1, 2, 3] and again.best_epoch == result.best_epoch
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_the_state_survives_a_weights_only_round_trip():
    checkpoints: list[dict] = []
    train(_model(), *_data(), dataclasses.replace(CONFIG, epochs=2, stopping="val-loss"),
          on_checkpoint=lambda s: checkpoints.append(_round_trip(s)))
    state = TrainState.from_dict(checkpoints[-1])
    assert state.epochs_done == 2 and len(state.history) == 2 and state.history[-1].epoch == 2
    assert state.best_state is not None and state.best_epoch in (1, 2)  # the val-loss rule keeps its best weights
    assert set(state.to_dict()) == set(checkpoints[-1])
