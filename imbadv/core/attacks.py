"""Gradient-sign attacks (section 3.2), pure functions of (model, images, labels, config).

Images are float pixels in [0, 1], shape (N, 3, H, W); labels are int64 (N,). The gradient is
that of the mean cross-entropy at the given labels (the paper uses the true label), taken with
the model in eval mode: on the logits, or (`attack_loss="keras"`) as Keras 2 computed it on
clipped softmax outputs. Distance: L-inf, `config.eps` in pixel units.

- FGSM ascent:  clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)   (Goodfellow et al., 2015)
- FGSM descent: clip(x - eps * sign(grad_x CE(f(x), y)), 0, 1); with a target label, a
  targeted attack.
- Iterative FGSM (BIM, Kurakin et al., 2017): `steps` steps of `step_size`, each projected onto
  the eps-ball around x and onto [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imbadv.config import AttackConfig
from imbadv.core.inference import autocast


# Keras 2's backend epsilon: categorical_crossentropy clips probabilities to [EPSILON, 1 - EPSILON].
KERAS_EPSILON = 1e-7


def keras_crossentropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy as Keras 2 computes it on a softmax output: probabilities clipped to
    [1e-7, 1 - 1e-7] first, so an image whose label probability is above 1 - 1e-7 has zero gradient."""
    probabilities = torch.softmax(logits, dim=1).clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -torch.log(probabilities.gather(1, labels[:, None])).mean()


LOSSES = {"logits": F.cross_entropy, "keras": keras_crossentropy}


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   precision: str = "fp32", loss: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x of the mean cross-entropy at `labels`, the logits of that forward pass); `loss` picks
    the cross-entropy on the logits or Keras' on clipped softmax outputs."""
    was_training = model.training
    model.eval()
    try:
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad(), autocast(images.device, precision):
            logits = model(x).float()
            value = LOSSES[loss](logits, labels)
        (grad,) = torch.autograd.grad(value, x)
    finally:
        model.train(was_training)
    return grad, logits.detach()


def attack_labels(labels: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    """The labels whose loss the attack follows: the true ones or the target label."""
    if config.target_label is None:
        return labels
    return torch.full_like(labels, config.target_label)


def _sign(config: AttackConfig) -> float:
    return 1.0 if config.direction == "ascent" else -1.0


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
         precision: str = "fp32") -> torch.Tensor:
    """One gradient-sign step of size eps, clipped to [0, 1]."""
    return fgsm_with_logits(model, images, labels, config, precision)[0]


def fgsm_with_logits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     config: AttackConfig, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """FGSM, also returning the model's clean logits from the gradient pass (saves a forward)."""
    sign, logits = gradient_sign(model, images, labels, config, precision)
    return fgsm_step(images, sign, config), logits


def gradient_sign(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
                  precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(sign of FGSM's input gradient: -1, 0 or 1 per pixel, the clean logits); eps and direction
    do not enter it."""
    grad, logits = input_gradient(model, images, attack_labels(labels, config), precision, config.attack_loss)
    return grad.sign(), logits


def fgsm_step(images: torch.Tensor, sign: torch.Tensor, config: AttackConfig) -> torch.Tensor:
    """clip(x +/- eps * sign, 0, 1): FGSM's step from a gradient's sign, in `config`'s direction."""
    return (images + _sign(config) * config.eps * sign).clamp_(0.0, 1.0)


def ifgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
          precision: str = "fp32") -> torch.Tensor:
    """Iterative FGSM: `steps` steps of `step_size`, projected onto the eps-ball and [0, 1]."""
    target = attack_labels(labels, config)
    lower = (images - config.eps).clamp_(min=0.0)
    upper = (images + config.eps).clamp_(max=1.0)
    adversarial = images.detach().clone()
    for _ in range(config.steps):
        grad, _ = input_gradient(model, adversarial, target, precision, config.attack_loss)
        adversarial = adversarial + _sign(config) * config.iteration_step * grad.sign()
        adversarial = torch.max(torch.min(adversarial, upper), lower)
    return adversarial


ATTACKS = {"fgsm": fgsm, "ifgsm": ifgsm}


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
               precision: str = "fp32") -> torch.Tensor:
    """The attack that `config.attack` names."""
    return ATTACKS[config.attack](model, images, labels, config, precision)
