"""Keras 2 RMSprop with per-update decay, checked against an independent numpy implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imbadv.core.optim import keras_rmsprop


pytestmark = pytest.mark.usefixtures("one_thread")


class KerasRMSprop:
    """The Keras 2 update, written from its formula:

    a <- rho * a + (1 - rho) * g^2
    p <- p - lr_t * g / (sqrt(a) + eps),   lr_t = lr / (1 + decay * t),  t = earlier updates.
    """

    def __init__(self, params: list[np.ndarray], lr: float, rho: float, eps: float, decay: float):
        self.params = [p.copy() for p in params]
        self.acc = [np.zeros_like(p) for p in params]
        self.lr, self.rho, self.eps, self.decay = lr, rho, eps, decay
        self.t = 0

    def step(self, grads: list[np.ndarray]) -> None:
        lr_t = self.lr / (1.0 + self.decay * self.t)
        for i, g in enumerate(grads):
            self.acc[i] = self.rho * self.acc[i] + (1.0 - self.rho) * g * g
            self.params[i] = self.params[i] - lr_t * g / (np.sqrt(self.acc[i]) + self.eps)
        self.t += 1


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.1 * rng.normal(size=20)
    w0 = rng.normal(size=3)
    b0 = np.array([0.0])
    return X, y, w0, b0


def _numpy_grads(X, y, w, b):
    """Gradient of mean((X w + b - y)^2) (a quadratic in w, b)."""
    r = X @ w + b[0] - y
    return [2.0 / len(y) * X.T @ r, np.array([2.0 / len(y) * r.sum()])]


@pytest.mark.parametrize("lr,rho,eps,decay", [
    (0.1, 0.9, 1e-7, 0.5),
    (0.05, 0.8, 1e-3, 2.0),   # a large eps, so its placement (after the sqrt) matters
    (0.1, 0.9, 1e-7, 0.0),    # no decay: a constant learning rate
])
def test_matches_keras_formula_step_by_step(lr, rho, eps, decay):
    X, y, w0, b0 = _problem()
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    optimizer, scheduler = keras_rmsprop([w, b], lr=lr, rho=rho, eps=eps, decay=decay)
    reference = KerasRMSprop([w0, b0], lr=lr, rho=rho, eps=eps, decay=decay)
    Xt, yt = torch.tensor(X), torch.tensor(y)

    for step in range(6):
        optimizer.zero_grad()
        loss = ((Xt @ w + b - yt) ** 2).mean()
        loss.backward()
        # the autograd gradient is the one the numpy reference uses
        ref_grads = _numpy_grads(X, y, *reference.params)
        np.testing.assert_allclose(w.grad.numpy(), ref_grads[0], rtol=1e-10, atol=1e-12)
        optimizer.step()
        scheduler.step()
        reference.step(ref_grads)
        np.testing.assert_allclose(w.detach().numpy(), reference.params[0], rtol=1e-10, atol=1e-12,
                                   err_msg=f"weights differ after update {step + 1}")
        np.testing.assert_allclose(b.detach().numpy(), reference.params[1], rtol=1e-10, atol=1e-12,
                                   err_msg=f"bias differs after update {step + 1}")
    # the parameters did move: the check is not comparing two frozen vectors
    assert np.abs(reference.params[0] - w0).max() > 1e-2


def test_schedule_matters_with_large_decay():
    """A wrong schedule (e.g. t counted from 1, or no decay) would be visibly off after a few steps."""
    X, y, w0, b0 = _problem(1)
    keras = KerasRMSprop([w0, b0], lr=0.1, rho=0.9, eps=1e-7, decay=0.5)
    shifted = KerasRMSprop([w0, b0], lr=0.1, rho=0.9, eps=1e-7, decay=0.5)
    shifted.t = 1  # the off-by-one schedule
    for _ in range(4):
        keras.step(_numpy_grads(X, y, *keras.params))
        shifted.step(_numpy_grads(X, y, *shifted.params))
    assert np.abs(keras.params[0] - shifted.params[0]).max() > 1e-3


def test_first_update_uses_the_full_learning_rate():
    """t = 0 at the first update: a single step moves each coordinate by lr * g / (|g| sqrt(1-rho) + eps)."""
    lr, rho, eps, decay = 0.1, 0.9, 1e-7, 0.5
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    optimizer, scheduler = keras_rmsprop([p], lr=lr, rho=rho, eps=eps, decay=decay)
    (p * torch.tensor([3.0, -0.5], dtype=torch.float64)).sum().backward()
    optimizer.step()
    scheduler.step()
    g = np.array([3.0, -0.5])
    expected = np.array([1.0, -2.0]) - lr * g / (np.sqrt((1 - rho) * g * g) + eps)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("decay", [0.5, 1e-5])
def test_learning_rate_after_k_updates(decay):
    lr = 1e-3
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer, scheduler = keras_rmsprop([p], lr=lr, rho=0.9, eps=1e-7, decay=decay)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
    for k in range(1, 8):
        optimizer.zero_grad()
        p.sum().backward()
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr / (1 + decay * k), rel=1e-12)


def test_optimizer_hyperparameters():
    p = torch.zeros(2, requires_grad=True)
    optimizer, _ = keras_rmsprop([p], lr=0.01, rho=0.8, eps=1e-6, decay=0.0)
    group = optimizer.param_groups[0]
    assert group["alpha"] == 0.8
    assert group["eps"] == 1e-6
    assert group["momentum"] == 0 and group["centered"] is False and group["weight_decay"] == 0
