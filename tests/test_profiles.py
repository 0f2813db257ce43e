"""Imbalance profiles beyond the paper's ratio 5 and the sweep's grid (no data, no MLflow)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from imbadv.config import PAPER_RATIO, ConfigError, EvaluateConfig, TrainConfig, model_label
from imbadv.core.sampling import class_counts, largest_majority_count, sample_split
from imbadv.tracking.names import registered_model_name
from imbadv.tracking.provenance import CODE_PARTS

COMMIT = dict.fromkeys(CODE_PARTS, "commit")
# CIFAR-10-LT at ratio 100 as the LDAM-DRW code builds it (Cao et al. 2019; Cui et al. 2019)
CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), 5000))


@pytest.mark.parametrize(("sampling", "class_id", "ratio", "expected"), [
    ("under", 3, 20, [5000] * 3 + [250] + [5000] * 6),
    ("over", 3, 2, [2500] * 3 + [5000] + [2500] * 6),
    ("under", 3, None, [5000] * 3 + [1000] + [5000] * 6),  # the paper's ratio
    ("longtail", None, 100, CIFAR10_LT_100),
    ("longtail", None, 10, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]),
    ("step", None, 10, [5000] * 5 + [500] * 5),
])
def test_profile_counts(labels, sampling, class_id, ratio, expected):
    assert class_counts(sampling, class_id, 10, 5000, ratio) == expected
    split = sample_split(labels, TrainConfig(sampling=sampling, class_id=class_id, ratio=ratio), 10)
    assert np.bincount(labels[np.concatenate([split.train, split.val])], minlength=10).tolist() == expected
    assert np.intersect1d(split.train, split.val).size == 0


def test_natural_keeps_every_training_image_and_splits_it_by_class():
    labels = np.repeat(np.arange(4), [210, 400, 2250, 30])
    split = sample_split(labels, TrainConfig(sampling="natural"), 4)
    assert len(split.train) + len(split.val) == len(labels)
    assert np.bincount(labels[split.val]).tolist() == [21, 40, 225, 3]  # stratified: the profile's own imbalance


def test_a_class_left_with_fewer_than_two_training_images_is_refused_in_one_line(labels):
    with pytest.raises(ConfigError, match="class 8 keeps 2 images, 1 to train on") as error:
        sample_split(labels, TrainConfig(sampling="longtail", ratio=5000), 10)
    assert "\n" not in str(error.value) and "--ratio" in str(error.value)
    sample_split(labels, TrainConfig(sampling="longtail", ratio=1000), 10)  # 5 images: 4 train, 1 validate


def test_counts_a_dataset_cannot_give_name_the_largest_it_can():
    labels = np.repeat(np.arange(3), [210, 400, 500])
    with pytest.raises(ConfigError, match="lower --majority-count to 210 or less"):
        sample_split(labels, TrainConfig(sampling="balanced", majority_count=300), 3)
    with pytest.raises(ConfigError, match="class 0 has 210 training images, fewer than the 220 asked: lower "
                                          "--majority-count to 500 or less"):  # class 2's 500, not the smallest's 210
        sample_split(labels, TrainConfig(sampling="over", class_id=2, majority_count=1100), 3)


@pytest.mark.parametrize(("sampling", "class_id", "ratio"), [
    ("balanced", None, None), ("under", 0, 5.0), ("under", 2, 5.0), ("over", 1, 5.0), ("over", 0, 2.5),
    ("longtail", None, 10.0), ("longtail", None, 100.0), ("step", None, 3.0),
])
def test_the_largest_majority_count_is_the_largest_that_fits(sampling, class_id, ratio):
    available = [210, 2250, 400, 5000, 37]

    def fit(m: int) -> bool:
        return all(w <= a for w, a in zip(class_counts(sampling, class_id, 5, m, ratio, available), available,
                                          strict=True))

    fits = [m for m in range(5001) if fit(m)]
    assert largest_majority_count(sampling, class_id, available, ratio) == max(fits)


@pytest.mark.parametrize(("options", "message"), [
    ({"sampling": "balanced", "ratio": 20}, "takes no ratio"),
    ({"sampling": "natural", "ratio": 20}, "takes no ratio"),
    ({"sampling": "under", "class_id": 3, "ratio": 1}, "ratio 1 is the balanced model"),
    ({"sampling": "longtail", "ratio": 0.5}, "not above 1"),
    ({"sampling": "longtail", "class_id": 3, "ratio": 10}, "takes no class id"),
    ({"sampling": "step", "class_id": 3}, "takes no class id"),
])
def test_bad_profiles_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_the_papers_ratio_is_one_model_whether_given_or_not():
    assert TrainConfig(sampling="under", class_id=3) == TrainConfig(sampling="under", class_id=3, ratio=5)
    assert TrainConfig(sampling="under", class_id=3).ratio == PAPER_RATIO
    assert TrainConfig().ratio is None and TrainConfig(sampling="natural").ratio is None
    assert EvaluateConfig(sampling="over", class_id=1, ratio=5.0).ratio == PAPER_RATIO


def test_names_keep_the_papers_models_and_say_every_other_ratio():
    assert registered_model_name("cifar10", "under", 3, None) == "imbadv-cifar10-under-c3"
    assert registered_model_name("cifar10", "under", 3, 5.0) == "imbadv-cifar10-under-c3"
    assert registered_model_name("cifar10", "under", 3, 20.0) == "imbadv-cifar10-under-c3-r20"
    assert registered_model_name("cifar10", "over", 1, 2.5) == "imbadv-cifar10-over-c1-r2.5"
    assert registered_model_name("cifar10", "longtail", None, 100.0) == "imbadv-cifar10-longtail-r100"
    assert registered_model_name("cifar10", "longtail", None, None) == "imbadv-cifar10-longtail-r5"
    assert registered_model_name("gtsrb32", "natural", None, None) == "imbadv-gtsrb32-natural"
    assert model_label("step", None, 10.0) == "step-r10"


def test_the_papers_models_keep_their_initial_weights_and_other_ratios_get_their_own():
    def old_seed(seed: int, sampling: str, class_id: int | None) -> int:  # before profiles existed
        text = f"imbadv-init:{seed}:{sampling}:{'' if class_id is None else class_id}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1

    assert TrainConfig(sampling="under", class_id=3, seed=2).init_seed == old_seed(2, "under", 3)
    assert TrainConfig(seed=1).init_seed == old_seed(1, "balanced", None)
    seeds = {TrainConfig(sampling="under", class_id=3, ratio=r).init_seed for r in (2, 5, 20)}
    seeds |= {TrainConfig(sampling="longtail", ratio=r).init_seed for r in (10, 100)}
    assert len(seeds) == 5
