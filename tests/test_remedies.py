"""Remedies for imbalance: each loss against its direct formula, over-sampling's epochs, names, refusals."""

from __future__ import annotations

import math

import pytest
import torch

from imbadv.config import ConfigError, TrainConfig
from imbadv.core.remedies import class_balanced_weights, epoch_order, remedy_values, training_loss
from imbadv.tracking.names import registered_model_name

COUNTS = torch.tensor([500, 120, 30, 8])


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=generator), torch.tensor([0, 1, 2, 3, 3, 1])


def _direct_ce(logits: torch.Tensor, labels: torch.Tensor, weights: list[float] | None = None) -> float:
    """Cross-entropy written out: -log softmax of the label, weighted mean when weights are given."""
    total, norm = 0.0, 0.0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        w = 1.0 if weights is None else weights[label]
        total += w * (log_z - row[label])
        norm += w
    return total / norm


def test_ce_is_plain_cross_entropy(batch):
    logits, labels = batch
    loss = training_loss(TrainConfig(), COUNTS)(logits, labels)
    assert loss.item() == pytest.approx(_direct_ce(logits, labels), rel=1e-6)


def test_class_balanced_weights_follow_the_effective_number_and_sum_to_the_classes(batch):
    beta = 0.999
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS.tolist()]
    expected = [w / sum(raw) * 4 for w in raw]
    weights = class_balanced_weights(COUNTS, beta)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.sum().item() == pytest.approx(4.0) and weights[3] > weights[2] > weights[1] > weights[0]
    logits, labels = batch
    loss = training_loss(TrainConfig(loss="cb", cb_beta=beta), COUNTS)(logits, labels)
    assert loss.item() == pytest.approx(_direct_ce(logits, labels, expected), rel=1e-5)


def test_logit_adjusted_loss_adds_tau_log_prior(batch):
    logits, labels = batch
    tau = 1.5
    priors = [n / sum(COUNTS.tolist()) for n in COUNTS.tolist()]
    adjusted = logits + torch.tensor([tau * math.log(p) for p in priors])
    loss = training_loss(TrainConfig(loss="la", la_tau=tau), COUNTS)(logits, labels)
    assert loss.item() == pytest.approx(_direct_ce(adjusted, labels), rel=1e-5)


def test_balanced_softmax_weighs_each_exponent_by_its_class_count(batch):
    logits, labels = batch
    counts = COUNTS.tolist()
    direct = 0.0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):  # Ren et al. (2020), eq. 4
        weighted = [n * math.exp(v) for n, v in zip(counts, row, strict=True)]
        direct -= math.log(weighted[label] / sum(weighted))
    loss = training_loss(TrainConfig(loss="bs"), COUNTS)(logits, labels)
    assert loss.item() == pytest.approx(direct / len(labels), rel=1e-5)
    la = training_loss(TrainConfig(loss="la", la_tau=1.0), COUNTS)(logits, labels)
    assert loss.item() == pytest.approx(la.item(), rel=1e-5)  # the same up to a constant in the logits


def test_remedy_values_log_what_each_loss_computed():
    assert "class_weights" in remedy_values(TrainConfig(loss="cb"), COUNTS)
    assert remedy_values(TrainConfig(loss="la"), COUNTS)["logit_offsets"][0] == pytest.approx(
        math.log(500 / 658), rel=1e-6)
    assert remedy_values(TrainConfig(), COUNTS)["train_counts"] == COUNTS.tolist()


def test_a_loss_remedy_refuses_a_class_missing_from_the_training_set():
    with pytest.raises(ValueError, match="needs every class"):
        training_loss(TrainConfig(loss="cb"), torch.tensor([10, 0, 5]))


def test_oversampling_brings_every_class_to_the_largest_and_keeps_each_own_image():
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([50, 7, 2]))
    generator = torch.Generator().manual_seed(3)
    first, second = epoch_order(labels, generator, "oversample"), epoch_order(labels, generator, "oversample")
    for order in (first, second):
        assert torch.bincount(labels[order]).tolist() == [50, 50, 50]
        assert set(order.tolist()) == set(range(len(labels)))  # every image at least once
    assert not torch.equal(first, second)  # a fresh draw each epoch


def test_no_resampling_is_the_plain_shuffle_of_before():
    labels = torch.arange(10) % 3
    ours = epoch_order(labels, torch.Generator().manual_seed(5), "none")
    assert torch.equal(ours, torch.randperm(10, generator=torch.Generator().manual_seed(5)))


def test_names_say_the_remedy_and_each_remedy_starts_from_its_own_weights():
    assert registered_model_name("cifar10", "under", 3, 5.0, "cb") == "imbadv-cifar10-under-c3-cb"
    assert registered_model_name("cifar10", "longtail", None, 100.0, "ce", "oversample") == \
        "imbadv-cifar10-longtail-r100-oversample"
    assert registered_model_name("cifar10", "under", 3, 5.0, "ce") == "imbadv-cifar10-under-c3"
    seeds = {TrainConfig(sampling="under", class_id=3, loss=loss).init_seed for loss in ("ce", "cb", "la", "bs")}
    assert len(seeds) == 4


@pytest.mark.parametrize(("options", "message"), [
    ({"loss": "focal"}, "unknown --loss"), ({"resample": "smote"}, "unknown --resample"),
    ({"cb_beta": 1.0}, "cb beta"), ({"la_tau": 0}, "la tau")])
def test_bad_remedies_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)
