"""The training loop: RMSprop until the validation loss stops improving (section 3.1).

Images live on the compute device as one uint8 tensor and batches are indexed there; losses and
accuracies accumulate on the device and are read once per epoch. The best weights (lowest
validation loss) are restored at the end.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from imbadv.config import TrainConfig
from imbadv.inference import autocast, predict_logits, set_layout, to_unit
from imbadv.optim import keras_rmsprop


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
        return {k: v for k, v in vars(self).items() if k != "epoch"}


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip, on the images' device."""
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator, device="cpu").tolist()
    dy = torch.randint(0, 9, (n,), generator=generator, device="cpu").tolist()
    crops = torch.stack([padded[i, :, y:y + h, x:x + w] for i, (x, y) in enumerate(zip(dx, dy, strict=True))])
    flip = torch.rand(n, generator=generator, device="cpu") < 0.5
    crops[flip.to(crops.device)] = crops[flip.to(crops.device)].flip(-1)
    return crops


def train(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
          val_images: torch.Tensor, val_labels: torch.Tensor, config: TrainConfig,
          on_epoch: Callable[[EpochMetrics], None] | None = None,
          on_checkpoint: Callable[[dict], None] | None = None, resume_from: dict | None = None) -> TrainResult:
    """Train `model` in place on uint8 images (N, 3, 32, 32) already on its device.

    Stops after `config.patience` epochs without a lower validation loss or at `config.epochs`,
    and leaves the model holding the best epoch's weights. After every epoch `on_checkpoint` gets
    the whole training state (plain tensors and numbers); `resume_from` continues from such a
    state, giving the same weights as an uninterrupted run. With `config.channels_last` the steps
    run in that layout; the model is returned in the default layout either way.
    """
    device = next(model.parameters()).device
    set_layout(model, config.channels_last)
    optimizer, scheduler = keras_rmsprop(model.parameters(), config.lr, config.rho,
                                         config.optimizer_eps, config.decay)
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult()
    best_loss, best_state, since_best = float("inf"), None, 0
    first_epoch = 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        generator.set_state(resume_from["generator"])
        torch.set_rng_state(resume_from["torch_rng"])
        best_loss, since_best = resume_from["best_loss"], resume_from["since_best"]
        best_state = resume_from["best_state"] or None
        result.best_epoch, result.stopped_early = resume_from["best_epoch"], resume_from["stopped_early"]
        result.history = [EpochMetrics(**m) for m in resume_from["history"]]
        first_epoch = resume_from["epochs_done"]
    steps = (len(train_images) + config.batch_size - 1) // config.batch_size
    forward = torch.compile(model) if config.torch_compile else model  # shares the model's parameters

    for epoch in range(first_epoch, config.epochs):
        if result.stopped_early:
            break
        model.train()
        order = torch.randperm(len(train_images), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch",
                   disable=None)  # no bar when the output is not a terminal
        for step in bar:
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            images, labels = to_unit(train_images[index]), train_labels[index]
            if config.augment:
                images = _augment(images, generator)
            with autocast(device, config.precision):
                logits = forward(images)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(1) == labels).sum()
        bar.close()

        train_loss = loss_sum.item() / len(train_images)
        if not torch.isfinite(torch.tensor(train_loss)):
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1}: lower --lr "
                                   "or use --precision fp32")
        val_logits = predict_logits(model, val_images, config.eval_batch_size, config.precision)
        val_loss = F.cross_entropy(val_logits, val_labels.to(val_logits.device)).item()
        val_acc = (val_logits.argmax(1) == val_labels.to(val_logits.device)).float().mean().item()
        metrics = EpochMetrics(epoch + 1, train_loss, correct.item() / len(train_images), val_loss, val_acc,
                               optimizer.param_groups[0]["lr"])
        result.history.append(metrics)
        tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train_loss {train_loss:.4f} "
                   f"train_acc {metrics.train_acc:.4f} val_loss {val_loss:.4f} val_acc {val_acc:.4f}")
        if on_epoch is not None:
            on_epoch(metrics)

        if val_loss < best_loss:
            best_loss, best_state, since_best = val_loss, copy.deepcopy(model.state_dict()), 0
            result.best_epoch = epoch + 1
        else:
            since_best += 1
            result.stopped_early = since_best >= config.patience
        if on_checkpoint is not None:
            on_checkpoint({"epochs_done": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                           "torch_rng": torch.get_rng_state(), "best_loss": best_loss, "since_best": since_best,
                           "best_state": best_state or {}, "best_epoch": result.best_epoch,
                           "stopped_early": result.stopped_early, "history": [vars(m) for m in result.history]})

    if best_state is not None:
        model.load_state_dict(best_state)
    set_layout(model, channels_last=False)
    model.eval()
    return result
