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

Beyond the paper, to ask whether its findings hold against stronger attacks:

- PGD (Madry et al., 2018): iterative FGSM from a uniform random start in the eps-ball, with
  `restarts` starts drawn from `attack_seed`.
- MI-FGSM (Dong et al., 2018): iterative FGSM stepping along the sign of a momentum of the
  L1-normalised gradients, decayed by `decay`.
- AutoAttack (Croce and Hein, 2020): the reference ensemble of parameter-free attacks, run through
  torchattacks; untargeted ascent on the true label only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imbadv.config import AttackConfig, ConfigError
from imbadv.core.inference import autocast


# Keras 2's backend epsilon: categorical_crossentropy clips probabilities to [EPSILON, 1 - EPSILON].
KERAS_EPSILON = 1e-7


def keras_crossentropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean cross-entropy (with reduction="none", each image's) as Keras 2 computes it on a softmax output:
    probabilities clipped to [1e-7, 1 - 1e-7] first, so an image whose label probability is above 1 - 1e-7
    has zero gradient."""
    probabilities = torch.softmax(logits, dim=1).clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    losses = -torch.log(probabilities.gather(1, labels[:, None]))[:, 0]
    return losses.mean() if reduction == "mean" else losses


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
    """Iterative FGSM: `steps` steps of `step_size` from the clean images, projected onto the eps-ball
    and [0, 1]."""
    return projected_steps(model, images, images.detach().clone(), labels, config, precision)


def projected_steps(model: nn.Module, images: torch.Tensor, start: torch.Tensor, labels: torch.Tensor,
                    config: AttackConfig, precision: str = "fp32", decay: float | None = None) -> torch.Tensor:
    """`config.steps` sign steps of `config.iteration_step` from `start`, each projected onto the eps-ball
    around `images` and onto [0, 1]: the loop of ifgsm, pgd and, with a momentum `decay`, mifgsm (whose
    step follows the sign of g_t = decay * g_(t-1) + grad / mean|grad|, the mean taken per image)."""
    target = attack_labels(labels, config)
    lower = (images - config.eps).clamp_(min=0.0)
    upper = (images + config.eps).clamp_(max=1.0)
    adversarial, momentum = start, torch.zeros_like(images) if decay is not None else None
    for _ in range(config.steps):
        grad, _ = input_gradient(model, adversarial, target, precision, config.attack_loss)
        if momentum is not None:
            # an image whose gradient is exactly zero (a saturated Keras loss) adds nothing, not 0 / 0
            scale = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_(min=torch.finfo(grad.dtype).tiny)
            momentum = grad / scale + momentum * decay
            grad = momentum
        adversarial = adversarial + _sign(config) * config.iteration_step * grad.sign()
        adversarial = torch.max(torch.min(adversarial, upper), lower)
    return adversarial


def random_start(images: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A uniform random point of the eps-ball around `images`, clipped to [0, 1]; drawn on the CPU from
    `generator`, so a seed gives the same start on every device."""
    noise = torch.empty(images.shape).uniform_(-eps, eps, generator=generator)
    return (images + noise.to(images.device)).clamp_(0.0, 1.0)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
        precision: str = "fp32") -> torch.Tensor:
    """PGD (Madry et al., 2018): iterative FGSM from a uniform random start in the eps-ball.

    With `restarts` > 1 each image keeps its strongest restart: one that reaches the attack's goal
    (misclassified; with descent, classified as the label it follows) before one that does not, then the
    higher loss in the attack's direction. The starts come from a generator seeded with `attack_seed`,
    drawn in turn, so restart 1 is the start of a one-restart run with the same seed. Each call starts the
    generator afresh: batches of the same size get the same starts.
    """
    generator = torch.Generator().manual_seed(config.attack_seed)
    best = best_reached = best_loss = None
    for _ in range(config.restarts):
        start = random_start(images, config.eps, generator)
        adversarial = projected_steps(model, images, start, labels, config, precision)
        if config.restarts == 1:
            return adversarial
        reached, loss = _outcome(model, adversarial, labels, config, precision)
        if best is None:
            best, best_reached, best_loss = adversarial, reached, loss
            continue
        better = (reached & ~best_reached) | ((reached == best_reached) & (loss > best_loss))
        best = torch.where(better[:, None, None, None], adversarial, best)
        best_reached, best_loss = best_reached | reached, torch.where(better, loss, best_loss)
    return best


def _outcome(model: nn.Module, adversarial: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
             precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(whether each image reached the attack's goal, its loss signed so that higher is stronger)."""
    target = attack_labels(labels, config)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(adversarial.device, precision):
            logits = model(adversarial).float()
    finally:
        model.train(was_training)
    loss = LOSSES[config.attack_loss](logits, target, reduction="none")
    on_target = logits.argmax(1) == target
    return (~on_target if config.direction == "ascent" else on_target), _sign(config) * loss


def mifgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
           precision: str = "fp32") -> torch.Tensor:
    """MI-FGSM (Dong et al., 2018, algorithm 1): `steps` steps of `step_size` (default eps / steps) along the
    sign of the momentum g_t = decay * g_(t-1) + grad / mean|grad| (per image), projected onto the eps-ball
    and [0, 1]; decay 0 is ifgsm."""
    return projected_steps(model, images, images.detach().clone(), labels, config, precision, config.decay)


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: torchattacks 3.5's FAB calls `.view` on input
    gradients, which channels_last images (or a backend that follows channels_last weights) leave strided."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _ContiguousInput(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # torchattacks puts back the mode it finds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ContiguousGradient.apply(x.contiguous()))


def autoattack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
               precision: str = "fp32") -> torch.Tensor:
    """AutoAttack (Croce and Hein, ICML 2020), L-inf, untargeted on the true labels, through torchattacks.

    'standard' is the reference code's version='standard': APGD-CE, APGD-T and FAB-T (100 iterations,
    one restart, the 9 most likely other classes as targets) and Square (5,000 queries, no rescaled
    schedule); 'fast' is APGD-CE then APGD-T. Each attack runs on the images the ones before left
    correctly classified; an image none of them breaks (or that the model already misclassifies) comes back
    unchanged. Built from torchattacks' attacks with the reference settings, not its `AutoAttack`, which runs
    10 iterations. Every attack is seeded with `attack_seed` (the global RNG is restored afterwards).
    AutoAttack needs the whole model, not its input gradients alone (Square only queries it), and runs in
    fp32 whatever `precision`: its losses and FAB's linearisation are fp32 algorithms.
    """
    try:
        import torchattacks
    except ImportError:
        raise ConfigError("autoattack needs torchattacks: pip install --no-deps torchattacks==3.5.1 "
                          "(torchattacks 3.5 pins an old requests; --no-deps keeps MLflow's)") from None
    del precision  # fp32 always (see above); AttackConfig refuses descent, a target label and the Keras loss
    was_training = model.training
    network = _ContiguousInput(model.eval())
    with torch.no_grad():
        # torchattacks targets the n_classes - 1 most likely other classes; the reference, 9 of them
        n_classes = min(network(images[:1]).shape[1], 10)
    common = {"norm": "Linf", "eps": config.eps, "seed": config.attack_seed, "n_restarts": 1}
    attacks = [torchattacks.APGD(network, steps=100, loss="ce", rho=0.75, **common),
               torchattacks.APGDT(network, steps=100, n_classes=n_classes, rho=0.75, **common)]
    if config.aa_version == "standard":
        attacks += [torchattacks.FAB(network, steps=100, multi_targeted=True, n_classes=n_classes, **common),
                    torchattacks.Square(network, n_queries=5000, p_init=0.8, resc_schedule=False, **common)]
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            adversarial = torchattacks.MultiAttack(attacks)(images.detach().contiguous(), labels)
    finally:
        model.train(was_training)
    return adversarial.detach()


ATTACKS = {"fgsm": fgsm, "ifgsm": ifgsm, "pgd": pgd, "mifgsm": mifgsm, "autoattack": autoattack}


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig,
               precision: str = "fp32") -> torch.Tensor:
    """The attack that `config.attack` names."""
    return ATTACKS[config.attack](model, images, labels, config, precision)
