"""The training loop: RMSprop "until convergence" (section 3.1).

Images live on the compute device as one uint8 tensor and batches are indexed there; losses and
accuracies accumulate on the device and are read once per epoch. `stopping="train-loss"` ends when
the training loss levels off and keeps the last weights; `"val-loss"` ends when the held-out loss
stops falling and restores the weights of its lowest epoch.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from imbadv.config import TrainConfig
from imbadv.core.augment import draw_epoch, shift_and_flip
from imbadv.core.group import Member, TrainingGroup
from imbadv.core.inference import autocast, predict_logits, set_layout, to_unit
from imbadv.core.model import CIFAR10_MEAN, CIFAR10_STD, VGG, VGGSpec, keras_init_
from imbadv.core.optim import keras_rmsprop
from imbadv.core.remedies import LossFn, epoch_order, training_loss


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float

    def as_dict(self) -> dict[str, float]:
        """The metrics to log; without a validation split, no val_loss or val_acc."""
        return {k: v for k, v in vars(self).items() if k != "epoch" and not math.isnan(v)}


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# Seeding and building a model use torch's global generator: one thread at a time, so a model's
# initial weights do not depend on what other threads of a training group do meanwhile.
_INIT_LOCK = threading.Lock()


def initial_network(config: TrainConfig, num_classes: int, mean: tuple[float, ...] = CIFAR10_MEAN,
                    std: tuple[float, ...] = CIFAR10_STD) -> VGG:
    """The model before training: its weights drawn from `config.init_seed` (section 3.1's VGG); `mean`
    and `std` (0-1 scale, per channel) are its input normalisation (`model.input_statistics`)."""
    with _INIT_LOCK:
        seed_everything(config.init_seed)
        network = VGG(VGGSpec(num_classes=num_classes, width=config.width, dense_units=config.dense_units,
                              dropout=config.dropout, block_dropout=config.block_dropout,
                              dense_dropout=config.dense_dropout, batch_norm=config.batch_norm, mean=mean, std=std))
        return keras_init_(network) if config.init == "keras" else network


@dataclass
class TrainState:
    """Where a training stands after an epoch: early-stopping bookkeeping and every stateful part.

    `to_dict` gives plain tensors and numbers (a checkpoint `torch.load(..., weights_only=True)`
    reads back); `from_dict` and `restore` continue from one to the same weights as an
    uninterrupted run.
    """

    model: dict
    optimizer: dict
    scheduler: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    epochs_done: int = 0
    best_loss: float = float("inf")  # the lowest monitored loss so far (training or validation)
    since_best: int = 0
    best_state: dict | None = None  # the weights of the lowest validation loss so far (val-loss rule)
    best_epoch: int = -1
    stopped_early: bool = False
    history: list[EpochMetrics] = field(default_factory=list)

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return values | {"best_state": self.best_state or {}, "history": [vars(m) for m in self.history]}

    @classmethod
    def from_dict(cls, values: dict) -> TrainState:
        return cls(**values | {"best_state": values["best_state"] or None,
                               "history": [EpochMetrics(**m) for m in values["history"]]})

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                generator: torch.Generator) -> None:
        """Load the saved parts into a freshly built model, optimizer, schedule and generator."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        generator.set_state(self.generator)
        torch.set_rng_state(self.torch_rng)

    def result(self) -> TrainResult:
        return TrainResult(list(self.history), self.best_epoch, self.stopped_early)


def train(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
          val_images: torch.Tensor, val_labels: torch.Tensor, config: TrainConfig,
          on_epoch: Callable[[EpochMetrics], None] | None = None,
          on_checkpoint: Callable[[dict], None] | None = None, resume_from: dict | None = None,
          group: TrainingGroup | None = None) -> TrainResult:
    """Train `model` in place on uint8 images (N, 3, 32, 32) already on its device.

    Stops by `config.stopping` (after `config.patience` epochs without a lower training loss, or
    validation loss) or at `config.epochs`; under the validation rule the model ends with the
    weights of its lowest validation loss. After every epoch `on_checkpoint` gets
    the whole training state (`TrainState.to_dict`); `resume_from` continues from such a state,
    giving the same weights as an uninterrupted run. With `config.channels_last` the steps run in
    that layout; the model is returned in the default layout either way. With `group`, the training
    epochs run vectorised with the group's other models (`imbadv.core.group`; the caller runs each
    member in its own thread); validation, early stopping and checkpoints stay this model's own.
    """
    set_layout(model, config.channels_last)
    optimizer, scheduler = keras_rmsprop(model.parameters(), config.lr, config.rho,
                                         config.optimizer_eps, config.decay)
    generator = torch.Generator().manual_seed(config.init_seed)  # this model's batch order
    if resume_from is not None:
        state = TrainState.from_dict(resume_from)
        state.restore(model, optimizer, scheduler, generator)
    else:
        state = TrainState(model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), generator.get_state(),
                           torch.get_rng_state())
    if group is not None and (config.torch_compile or config.augment != "none" or config.loss != "ce"
                              or config.resample != "none"):
        raise ValueError("a training group runs neither torch.compile, augmentation nor a remedy for imbalance: "
                         "train this model alone")
    loss_fn = training_loss(config, torch.bincount(train_labels.cpu(), minlength=model.spec.num_classes))
    forward = torch.compile(model) if config.torch_compile else model  # shares the model's parameters
    member = Member(model, optimizer, scheduler, generator, train_images, train_labels, config)
    if group is not None:
        group.join(member)
    try:
        _epochs(model, forward, optimizer, scheduler, generator, train_images, train_labels, val_images,
                val_labels, config, state, on_epoch, on_checkpoint, group, member, loss_fn)
    finally:
        if group is not None:
            group.leave(member)

    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    set_layout(model, channels_last=False)
    model.eval()
    return state.result()


def _epochs(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
            scheduler: Any, generator: torch.Generator, train_images: torch.Tensor, train_labels: torch.Tensor,
            val_images: torch.Tensor, val_labels: torch.Tensor, config: TrainConfig, state: TrainState,
            on_epoch: Callable[[EpochMetrics], None] | None, on_checkpoint: Callable[[dict], None] | None,
            group: TrainingGroup | None, member: Member, loss_fn: LossFn) -> None:
    """The epochs from `state.epochs_done` until early stopping or `config.epochs`; `loss_fn` is the
    training loss (the validation loss stays cross-entropy on the model's own logits)."""
    for epoch in range(state.epochs_done, config.epochs):
        if state.stopped_early:
            break
        if group is None:
            train_loss, train_acc = _train_epoch(model, forward, optimizer, scheduler, generator, train_images,
                                                 train_labels, config, epoch, loss_fn)
        else:
            train_loss, train_acc = group.train_epoch(member)
            _check_finite(train_loss, epoch)
        if len(val_images):
            val_logits = predict_logits(model, val_images, config.eval_batch_size, config.precision)
            val_loss = F.cross_entropy(val_logits, val_labels.to(val_logits.device)).item()
            val_acc = (val_logits.argmax(1) == val_labels.to(val_logits.device)).float().mean().item()
        else:  # --val-fraction 0: no hold-out, every epoch runs and the last one's weights are kept
            val_loss = val_acc = math.nan
        metrics = EpochMetrics(epoch + 1, train_loss, train_acc, val_loss, val_acc, optimizer.param_groups[0]["lr"])
        state.history.append(metrics)
        tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train_loss {train_loss:.4f} "
                   f"train_acc {train_acc:.4f} val_loss {val_loss:.4f} val_acc {val_acc:.4f}")
        if on_epoch is not None:
            on_epoch(metrics)

        if config.stopping == "train-loss":  # converged: no fall of more than min_delta for `patience` epochs
            if train_loss < state.best_loss - config.min_delta:
                state.best_loss, state.since_best = train_loss, 0
            else:
                state.since_best += 1
                state.stopped_early = state.since_best >= config.patience
            state.best_epoch = epoch + 1  # the last weights are the converged model
        elif math.isnan(val_loss):
            state.best_epoch = epoch + 1
        elif val_loss < state.best_loss:
            state.best_loss, state.best_state, state.since_best = val_loss, copy.deepcopy(model.state_dict()), 0
            state.best_epoch = epoch + 1
        else:
            state.since_best += 1
            state.stopped_early = state.since_best >= config.patience
        state.epochs_done = epoch + 1
        if on_checkpoint is not None:
            state.model, state.optimizer, state.scheduler = (model.state_dict(), optimizer.state_dict(),
                                                             scheduler.state_dict())
            state.generator, state.torch_rng = generator.get_state(), torch.get_rng_state()
            on_checkpoint(state.to_dict())


def _train_epoch(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 scheduler: Any, generator: torch.Generator, train_images: torch.Tensor, train_labels: torch.Tensor,
                 config: TrainConfig, epoch: int, loss_fn: LossFn = F.cross_entropy) -> tuple[float, float]:
    """One pass over the training set in a fresh random order (with `--resample oversample`, each class
    drawn up to the largest's count); returns its mean loss and accuracy."""
    device = next(model.parameters()).device
    model.train()
    order = epoch_order(train_labels, generator, config.resample).to(device)
    steps = (len(order) + config.batch_size - 1) // config.batch_size
    draws = (None if config.augment == "none" else
             draw_epoch(config.augment, len(order), train_images.shape[-1], generator, device))
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch",
               disable=None)  # no bar when the output is not a terminal
    for step in bar:
        index = order[step * config.batch_size:(step + 1) * config.batch_size]
        images, labels = to_unit(train_images[index]), train_labels[index]
        if draws is not None:  # this batch's positions in the epoch's draws
            images = shift_and_flip(images, draws.batch(slice(step * config.batch_size,
                                                              (step + 1) * config.batch_size)))
        with autocast(device, config.precision):
            logits = forward(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(index)
        correct += (logits.argmax(1) == labels).sum()
    bar.close()
    train_loss = loss_sum.item() / len(order)
    _check_finite(train_loss, epoch)
    return train_loss, correct.item() / len(order)


def _check_finite(train_loss: float, epoch: int) -> None:
    if not torch.isfinite(torch.tensor(train_loss)):
        raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1}: lower --lr "
                               "or use --precision fp32")
