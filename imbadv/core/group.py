"""Several models of one architecture trained side by side: one vectorised step for all of them.

At the paper's batch of 32 a single small VGG cannot fill a GPU; stacking the parameters of M
models (`torch.func.stack_module_state`) and taking their gradients under `torch.func.vmap` makes
each kernel do M models' work. Each model keeps everything that makes it itself: its own images,
its own generator and so its own batch order, its own RMSprop state and update count, its own
early stopping (a model that stops leaves the group, the others go on) and its own checkpoints,
which are the single-model trainer's (`TrainState`), so a model trained in a group resumes alone
and the other way round.

The models' threads meet once per epoch (`TrainingGroup.train_epoch`): the last to arrive runs
the epoch for all who are there, then each goes on alone to validate, log and checkpoint. The
optimiser update is the same elementwise RMSprop as torch's, applied to the stacked tensors; the
gradients come from batched convolutions, which round differently from one model's, so a model
trained in a group matches the same model trained alone to within float32 rounding that grows
with the steps taken (tested on the CPU; bit for bit it is not).
"""

from __future__ import annotations

import copy
import re
import threading
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from imbadv.config import TrainConfig
from imbadv.core.inference import autocast, to_unit


@dataclass(eq=False)
class Member:
    """One model of a group, with what its epochs need; `result` holds its last epoch's (loss, accuracy)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    images: torch.Tensor  # uint8 (N, 3, 32, 32) on the device
    labels: torch.Tensor
    config: TrainConfig
    result: tuple[float, float] | BaseException | None = None


class TrainingGroup:
    """Meeting point of the models trained together: `expected` members join, each leaves when it stops."""

    def __init__(self, expected: int) -> None:
        self._expected = self._size = expected
        self._joined = 0
        self._joined_threads: set[int] = set()
        self._members: list[Member] = []
        self._arrived: list[Member] = []
        self._round = 0
        self._lock = threading.Condition()

    @property
    def size(self) -> int:
        """The models the group was made for."""
        return self._size

    def join(self, member: Member) -> None:
        with self._lock:
            if self._members and (member.images.shape[0], member.config.batch_size) != (
                    self._members[0].images.shape[0], self._members[0].config.batch_size):
                raise ValueError("a group trains models on equally many images in equal batches: train this one "
                                 "alone")
            self._members.append(member)
            self._joined += 1
            self._joined_threads.add(threading.get_ident())
            self._lock.notify_all()

    def release(self) -> None:
        """Called by each member's thread when it ends: one that never joined (its job failed before its
        training began) is no longer waited for."""
        with self._lock:
            if threading.get_ident() not in self._joined_threads:
                self._expected -= 1
            self._lock.notify_all()

    def leave(self, member: Member) -> None:
        """A member that stopped (or failed) no longer holds back the others."""
        with self._lock:
            if member in self._members:
                self._members.remove(member)
            if member in self._arrived:
                self._arrived.remove(member)
            self._lock.notify_all()

    def train_epoch(self, member: Member) -> tuple[float, float]:
        """One epoch for `member` (and every member that arrives with it); its mean loss and accuracy."""
        with self._lock:
            self._arrived.append(member)
            this_round = self._round
            self._lock.notify_all()
            while True:
                if self._round != this_round:  # another member ran the epoch, this one included
                    break
                if self._joined == self._expected and set(self._arrived) >= set(self._members):
                    members, self._arrived = list(self._arrived), []
                    self._round += 1
                    self._lock.notify_all()
                    self._lock.release()
                    try:
                        _run_epoch(members)
                    except BaseException as error:  # every member of the round gets the failure
                        for m in members:
                            m.result = error
                    finally:
                        self._lock.acquire()
                    self._lock.notify_all()
                    break
                self._lock.wait()
            while member.result is None:
                self._lock.wait()
            result, member.result = member.result, None
        if isinstance(result, BaseException):
            raise result
        return result


def _run_epoch(members: list[Member]) -> None:
    """One pass of every member over its training set, in its own order, with vectorised steps."""
    config = members[0].config
    device = members[0].images.device
    count, batch = members[0].images.shape[0], config.batch_size
    models = [m.model for m in members]
    for model in models:
        model.train()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    names = list(params)
    owned = [dict(m.model.named_parameters()) for m in members]
    # RMSprop state, stacked: each member's square average (zeros before its first update) and update count
    square = {n: torch.stack([_square_avg(m.optimizer, owned[j][n]) for j, m in enumerate(members)]) for n in names}
    updates = [m.scheduler.last_epoch for m in members]
    orders = [torch.randperm(count, generator=m.generator).to(device) for m in members]

    def loss_of(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(device, config.precision):
            logits = functional_call(base, (p, b), (x,))
            loss = F.cross_entropy(logits.float(), y)
        return loss, logits

    step_grads = vmap(grad_and_value(loss_of, has_aux=True), randomness="different")
    loss_sum = torch.zeros(len(members), device=device)
    correct = torch.zeros(len(members), device=device, dtype=torch.long)
    for step in range(0, count, batch):
        index = torch.stack([order[step:step + batch] for order in orders])
        x = torch.stack([to_unit(m.images[i]) for m, i in zip(members, index, strict=True)])
        y = torch.stack([m.labels[i] for m, i in zip(members, index, strict=True)])
        grads, (loss, logits) = step_grads(params, buffers, x, y)
        with torch.no_grad():
            _rmsprop(params, grads, square, members, updates)
        updates = [u + 1 for u in updates]
        loss_sum += loss.detach() * index.shape[1]
        correct += (logits.argmax(-1) == y).sum(1)
    with torch.no_grad():  # the members' own modules and optimisers take the results back
        for j, m in enumerate(members):
            for n in names:
                owned[j][n].copy_(params[n][j])
                state = m.optimizer.state[owned[j][n]]
                state["square_avg"] = square[n][j].clone()
                state["step"] = torch.tensor(float(updates[j]))
            with warnings.catch_warnings():  # the updates were the group's, not optimizer.step()'s
                warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
                for _ in range(updates[j] - m.scheduler.last_epoch):
                    m.scheduler.step()
    losses, accuracies = (loss_sum / count).tolist(), (correct.double() / count).tolist()
    for j, m in enumerate(members):
        m.result = (losses[j], accuracies[j])


def _square_avg(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> torch.Tensor:
    state = optimizer.state.get(param, {})
    return state["square_avg"].clone() if "square_avg" in state else torch.zeros_like(param,
                                                                                       memory_format=torch.preserve_format)


def _rmsprop(params: dict, grads: dict, square: dict, members: list[Member], updates: list[int]) -> None:
    """torch's RMSprop step (alpha = rho, eps after the square root) at each member's own learning rate.

    The same elementwise operations as torch.optim.RMSprop, on the stacked tensors at once when the
    members are at the same update count (the usual case), else member by member.
    """
    group = members[0].optimizer.param_groups[0]
    alpha, eps = group["alpha"], group["eps"]
    rates = [m.scheduler.base_lrs[0] * m.scheduler.lr_lambdas[0](u) for m, u in zip(members, updates, strict=True)]
    slices = [slice(None)] if len(set(rates)) == 1 else [slice(j, j + 1) for j in range(len(members))]
    for part in slices:
        lr = rates[part.start or 0]
        for name, param in params.items():
            g, avg_sq = grads[name][part], square[name][part]
            avg_sq.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            param[part].addcdiv_(g, avg_sq.sqrt().add_(eps), value=-lr)
