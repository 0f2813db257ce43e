"""Models trained side by side in a group: each as it would be alone, up to float32 rounding."""

from __future__ import annotations

import copy
import threading

import torch

from imbadv.config import resolve_train_config
from imbadv.core.group import Member, TrainingGroup, _rmsprop
from imbadv.core.model import VGG, VGGSpec
from imbadv.core.optim import keras_rmsprop
from imbadv.core.trainer import TrainState, train

SPEC = VGGSpec(num_classes=10, width=4, dense_units=16)


def _model(seed: int) -> VGG:
    torch.manual_seed(seed)
    return VGG(SPEC)


def _data(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
            torch.randint(0, 10, (count,), generator=generator))


def _in_group(models, datasets, configs, val, **per_member) -> list:
    """Train each model in its own thread, all in one group; returns each one's TrainResult."""
    group, results = TrainingGroup(len(models)), [None] * len(models)

    def member(j: int) -> None:
        try:
            results[j] = train(models[j], *datasets[j], *val, configs[j], group=group,
                               **{k: v[j] for k, v in per_member.items()})
        except BaseException as error:
            results[j] = error
        finally:
            group.release()

    threads = [threading.Thread(target=member, args=(j,)) for j in range(len(models))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a group member is stuck"
    return results


def test_the_stacked_update_is_torchs_rmsprop_bit_for_bit_at_each_members_own_step(one_thread):
    models = [_model(j) for j in range(3)]
    members = []
    for model in models:
        optimizer, scheduler = keras_rmsprop(model.parameters(), 1e-3, 0.9, 1e-7, 1e-2)
        members.append(Member(model, optimizer, scheduler, torch.Generator(), torch.empty(0), torch.empty(0),
                              resolve_train_config(preset="smoke")))
    reference = [_model(j) for j in range(3)]
    torch_steps = [keras_rmsprop(m.parameters(), 1e-3, 0.9, 1e-7, 1e-2) for m in reference]
    names = [n for n, _ in models[0].named_parameters()]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}
    square = {n: torch.zeros_like(p) for n, p in params.items()}
    for updates in ([0, 0, 0], [1, 1, 1], [2, 5, 9]):  # the same count, then each its own
        grads = {n: torch.randn_like(p) for n, p in params.items()}
        _rmsprop(params, grads, square, members, updates)
        for j, (model, (optimizer, scheduler)) in enumerate(zip(reference, torch_steps, strict=True)):
            scheduler.last_epoch = updates[j]  # the schedule at this member's own update count
            optimizer.param_groups[0]["lr"] = scheduler.get_lr()[0]
            for name, param in model.named_parameters():
                param.grad = grads[name][j].clone()
            optimizer.step()
            for name, param in model.named_parameters():
                assert torch.equal(param.detach(), params[name][j]), (updates, j, name)


def test_a_model_trained_in_a_group_matches_it_trained_alone(one_thread):
    config = resolve_train_config(preset="smoke", epochs=1, patience=5)  # batch 8, lr 1e-3
    datasets, val = [_data(j, 40) for j in range(3)], _data(9, 16)  # five steps each
    alone = [_model(j) for j in range(3)]
    for model, data in zip(alone, datasets, strict=True):
        train(model, *data, *val, config)
    grouped = [_model(j) for j in range(3)]
    results = _in_group(grouped, datasets, [config] * 3, val)
    for model, by_itself, result in zip(grouped, alone, results, strict=True):
        assert len(result.history) == 1
        difference = max((a - b).abs().max().item() for a, b in zip(model.parameters(), by_itself.parameters(),
                                                                    strict=True))
        # batched convolutions round differently: after five steps at lr 1e-3, within 1e-5 (measured ~1e-6)
        assert difference < 1e-5
        assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), _model(0).parameters(), strict=True))


def test_a_member_that_stops_leaves_the_group_and_the_others_go_on(one_thread):
    configs = [resolve_train_config(preset="smoke", epochs=epochs, patience=5) for epochs in (1, 3)]
    datasets, val = [_data(j, 16) for j in range(2)], _data(9, 8)
    results = _in_group([_model(0), _model(1)], datasets, configs, val)
    assert [len(r.history) for r in results] == [1, 3]


def test_a_member_whose_job_fails_before_training_is_not_waited_for(one_thread):
    group = TrainingGroup(2)
    config = resolve_train_config(preset="smoke", epochs=2, patience=5)
    result = []

    def failing() -> None:
        group.release()  # its job failed before train() was called

    def training() -> None:
        try:
            result.append(train(_model(0), *_data(0, 16), *_data(9, 8), config, group=group))
        finally:
            group.release()

    threads = [threading.Thread(target=failing), threading.Thread(target=training)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(result) == 1 and len(result[0].history) == 2


def test_a_checkpoint_written_in_a_group_resumes_alone(one_thread):
    config = resolve_train_config(preset="smoke", epochs=2, patience=5)
    datasets, val = [_data(j, 24) for j in range(2)], _data(9, 8)
    saved: list[list[dict]] = [[], []]
    _in_group([_model(0), _model(1)], datasets, [config] * 2, val,
              on_checkpoint=[lambda s: saved[0].append(copy.deepcopy(s)), lambda s: saved[1].append(copy.deepcopy(s))])
    after_one = saved[0][0]
    state = TrainState.from_dict(after_one)
    assert state.epochs_done == 1 and state.scheduler["last_epoch"] == 3  # 24 images in batches of 8
    assert {float(s["step"]) for s in state.optimizer["state"].values()} == {3.0}
    resumed = _model(0)
    result = train(resumed, *datasets[0], *val, config, resume_from=after_one)
    assert len(result.history) == 2 and result.history[0] == state.history[0]


def test_a_group_refuses_models_with_other_amounts_of_data(one_thread):
    config = resolve_train_config(preset="smoke", epochs=1, patience=5)
    results = _in_group([_model(0), _model(1)], [_data(0, 16), _data(1, 24)], [config] * 2, _data(9, 8))
    assert any(isinstance(r, ValueError) and "equally many images" in str(r) for r in results)
