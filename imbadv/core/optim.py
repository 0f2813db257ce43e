"""Keras 2 RMSprop with per-update decay, the paper's optimiser (section 3.1).

Keras 2 updates a <- rho * a + (1 - rho) * g^2 and p <- p - lr_t * g / (sqrt(a) + eps), with
lr_t = lr / (1 + decay * t) and t the number of earlier updates. torch's RMSprop has the same
update (alpha = rho, eps added after the square root); LambdaLR supplies lr_t.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def keras_rmsprop(params: Iterable[torch.nn.Parameter], lr: float, rho: float, eps: float,
                  decay: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """RMSprop and its per-update schedule: call `scheduler.step()` after every `optimizer.step()`."""
    optimizer = torch.optim.RMSprop(params, lr=lr, alpha=rho, eps=eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t))
    return optimizer, scheduler
