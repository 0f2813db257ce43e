"""Post-hoc logit adjustment of a trained model (Menon et al. 2021, section 4): predict
argmax_y f_y(x) - tau * log(prior_y), the priors being the training set's own class shares.

Unlike the `la` loss, nothing is retrained: the adjustment is a fixed offset after the network, a
buffer that travels with the weights, into the ONNX export and into every attack's gradient, so
the model that is attacked is the model that predicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def log_priors(train_counts: Sequence[int]) -> torch.Tensor:
    """log(n_i / sum n) for per-class training counts, all above zero."""
    counts = torch.tensor([float(n) for n in train_counts], dtype=torch.float64)
    if len(counts) == 0 or float(counts.min()) < 1:
        raise ValueError(f"post-hoc adjustment needs every class in the training set: counts {list(train_counts)}")
    return torch.log(counts / counts.sum()).float()


class LogitAdjusted(nn.Module):
    """`network`'s logits minus tau * log(prior): the post-hoc adjusted classifier."""

    def __init__(self, network: nn.Module, log_prior: torch.Tensor, tau: float) -> None:
        super().__init__()
        self.network = network
        self.tau = float(tau)
        self.register_buffer("offset", (self.tau * log_prior.float()).view(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) - self.offset
