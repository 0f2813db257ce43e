"""Remedies for class imbalance a practitioner would try: re-weighted and logit-adjusted losses, and
random over-sampling (beyond the paper, which trains with plain cross-entropy on the sampled set).

Every remedy reads the training set's own per-class counts:
- `cb`: class-balanced weights from the effective number of samples, w_i proportional to
  (1 - beta) / (1 - beta^n_i), normalised to sum to the number of classes (Cui et al. 2019), in
  torch's weighted cross-entropy (the batch mean divides by the batch's weights, as the LDAM-DRW code);
- `la`: logit-adjusted cross-entropy, logits + tau * log(prior) inside the loss (Menon et al. 2021);
- `bs`: Balanced Softmax, logits + log(n_i) inside the loss (Ren et al. 2020); the same gradients as
  `la` at tau 1, since log(n_i) and log(prior_i) differ by a constant;
- `oversample`: each epoch, every class drawn up to the largest class's count, its own images once
  and the rest drawn with replacement (random over-sampling).
The model's logits stay unadjusted: predictions and attacks use them as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from imbadv.config import TrainConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_priors(counts: torch.Tensor) -> torch.Tensor:
    """Each class's share of the training images."""
    counts = counts.double()
    return (counts / counts.sum()).float()


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. (2019)'s weights (1 - beta) / (1 - beta^n_i), summing to the number of classes."""
    counts = counts.double()
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
    return (weights / weights.sum() * len(counts)).float()


def training_loss(config: TrainConfig, counts: torch.Tensor) -> LossFn:
    """The loss a training minimises, given its per-class training counts (all of them above zero)."""
    if config.loss != "ce" and int(counts.min()) < 1:
        raise ValueError(f"--loss {config.loss} needs every class in the training set: counts {counts.tolist()}")
    if config.loss == "cb":
        weights = class_balanced_weights(counts, config.cb_beta)
        return lambda logits, labels: F.cross_entropy(logits, labels, weight=weights.to(logits.device))
    if config.loss in ("la", "bs"):
        offset = (config.la_tau * torch.log(class_priors(counts)) if config.loss == "la"
                  else torch.log(counts.double()).float())
        return lambda logits, labels: F.cross_entropy(logits + offset.to(logits.device), labels)
    return F.cross_entropy


def remedy_values(config: TrainConfig, counts: torch.Tensor) -> dict[str, list[float]]:
    """What a remedy computed from the counts (priors, class weights or logit offsets), to log."""
    values: dict[str, list[float]] = {"train_counts": counts.tolist(), "priors": class_priors(counts).tolist()}
    if config.loss == "cb":
        values["class_weights"] = class_balanced_weights(counts, config.cb_beta).tolist()
    if config.loss == "la":
        values["logit_offsets"] = (config.la_tau * torch.log(class_priors(counts))).tolist()
    if config.loss == "bs":
        values["logit_offsets"] = torch.log(counts.double()).tolist()
    return values


def epoch_order(labels: torch.Tensor, generator: torch.Generator, resample: str) -> torch.Tensor:
    """The training-set positions of one epoch, shuffled: each once, or with `oversample` every class
    brought up to the largest class's count by draws with replacement from its own images."""
    if resample == "none":
        return torch.randperm(len(labels), generator=generator)
    labels = labels.cpu()
    counts = torch.bincount(labels)
    largest = int(counts.max())
    parts = []
    for k in torch.nonzero(counts).flatten().tolist():
        own = torch.nonzero(labels == k).flatten()
        extra = own[torch.randint(len(own), (largest - len(own),), generator=generator)]
        parts.extend([own, extra])
    positions = torch.cat(parts)
    return positions[torch.randperm(len(positions), generator=generator)]
