"""Imbalanced training sets and the stratified validation split (section 3.1)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from imbadv.config import ConfigError, TrainConfig
from imbadv.core.sampling import class_counts, sample_split

NUM_CLASSES = 10
PER_CLASS = 5000


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """CIFAR-10-like training labels: 5000 per class, shuffled."""
    return np.random.default_rng(42).permutation(np.repeat(np.arange(NUM_CLASSES), PER_CLASS))


def _counts(labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.bincount(labels[indices], minlength=NUM_CLASSES)


@pytest.mark.parametrize("sampling,class_id,expected", [
    ("balanced", None, [5000] * 10),
    ("under", 3, [5000, 5000, 5000, 1000, 5000, 5000, 5000, 5000, 5000, 5000]),
    ("under", 0, [1000] + [5000] * 9),
    ("over", 7, [1000] * 7 + [5000] + [1000] * 2),
    ("over", 9, [1000] * 9 + [5000]),
])
def test_sampled_counts_per_class(labels, sampling, class_id, expected):
    config = TrainConfig(sampling=sampling, class_id=class_id, seed=0)
    split = sample_split(labels, config, NUM_CLASSES)
    total = _counts(labels, split.train) + _counts(labels, split.val)
    assert total.tolist() == expected
    assert class_counts(sampling, class_id, NUM_CLASSES, 5000, 5) == expected


@pytest.mark.parametrize("sampling,class_id", [("balanced", None), ("under", 2), ("over", 5)])
def test_validation_is_stratified_disjoint_and_inside_pool(labels, sampling, class_id):
    config = TrainConfig(sampling=sampling, class_id=class_id, seed=1)
    split = sample_split(labels, config, NUM_CLASSES)
    train_counts = _counts(labels, split.train)
    val_counts = _counts(labels, split.val)
    total = train_counts + val_counts
    # about val_fraction of each class (stratified), so the split keeps the imbalance
    for k in range(NUM_CLASSES):
        assert abs(val_counts[k] - config.val_fraction * total[k]) <= 1
    assert val_counts.tolist() == [round(c * config.val_fraction) for c in total]
    # no index twice, train and val disjoint
    assert len(np.unique(split.train)) == len(split.train)
    assert len(np.unique(split.val)) == len(split.val)
    assert np.intersect1d(split.train, split.val).size == 0
    # subsets of the pool: valid indices into the label array
    for part in (split.train, split.val):
        assert part.dtype.kind == "i"
        assert part.min() >= 0 and part.max() < len(labels)


def test_over_sampled_split_is_actually_imbalanced(labels):
    split = sample_split(labels, TrainConfig(sampling="over", class_id=4, seed=0), NUM_CLASSES)
    val = _counts(labels, split.val)
    train = _counts(labels, split.train)
    assert val[4] == 500 and all(val[k] == 100 for k in range(NUM_CLASSES) if k != 4)
    assert train[4] == 4500 and all(train[k] == 900 for k in range(NUM_CLASSES) if k != 4)


@pytest.mark.parametrize("val_fraction", [0.05, 0.25])
def test_val_fraction_is_followed(labels, val_fraction):
    config = TrainConfig(sampling="under", class_id=1, seed=0, val_fraction=val_fraction)
    split = sample_split(labels, config, NUM_CLASSES)
    val = _counts(labels, split.val)
    assert val[1] == round(1000 * val_fraction)
    assert val[0] == round(5000 * val_fraction)


@pytest.mark.parametrize(("config", "expected"), [
    (TrainConfig(sampling="under", class_id=6, seed=11),
     "21f589c8336ea635d04541fa3e6a760587f5e1c8ba5c54cea0ddb3e7659ef96e"),
    (TrainConfig(sampling="natural", seed=3), "f3bd9afd50a9a2c9aad0d92eede71a309b54823c9d43c82cb54aa44ec5d7188c"),
    (TrainConfig(sampling="longtail", ratio=100, seed=1),
     "eb8bb952f1d4266cb3779f64dc37e5388f5d8f93db0ad675c312cafcab2af683"),
])
def test_splits_without_groups_are_the_ones_trained_models_were_given(labels, config, expected):
    """SHA-256 of the split's indices before groups existed: a retrained CIFAR-10 model sees the same images."""
    split = sample_split(labels, config, NUM_CLASSES)
    digest = hashlib.sha256(split.train.astype(np.int64).tobytes() + b"|" + split.val.astype(np.int64).tobytes())
    assert digest.hexdigest() == expected


def test_same_seed_same_indices(labels):
    config = TrainConfig(sampling="under", class_id=6, seed=11)
    a = sample_split(labels, config, NUM_CLASSES)
    b = sample_split(labels, TrainConfig(sampling="under", class_id=6, seed=11), NUM_CLASSES)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)


def test_different_seed_different_indices(labels):
    a = sample_split(labels, TrainConfig(sampling="under", class_id=6, seed=0), NUM_CLASSES)
    b = sample_split(labels, TrainConfig(sampling="under", class_id=6, seed=1), NUM_CLASSES)
    assert not np.array_equal(a.val, b.val)
    # the 1000 kept images of the under-sampled class differ, not just their split
    kept_a = np.union1d(a.train, a.val)
    kept_b = np.union1d(b.train, b.val)
    assert not np.array_equal(kept_a[labels[kept_a] == 6], kept_b[labels[kept_b] == 6])


def test_balanced_uses_every_image(labels):
    split = sample_split(labels, TrainConfig(sampling="balanced", seed=3), NUM_CLASSES)
    np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.val])), np.arange(len(labels)))


def test_under_sampled_images_are_a_random_subset(labels):
    """The 1000 kept images are drawn from the whole class, not its first 1000 indices."""
    split = sample_split(labels, TrainConfig(sampling="under", class_id=0, seed=0), NUM_CLASSES)
    kept = np.union1d(split.train, split.val)
    kept0 = kept[labels[kept] == 0]
    pool0 = np.flatnonzero(labels == 0)
    assert np.isin(kept0, pool0).all()
    assert kept0.max() > pool0[1500]


@pytest.mark.parametrize("sampling,class_id", [("under", 10), ("over", 10), ("under", 25)])
def test_class_id_outside_dataset_raises(labels, sampling, class_id):
    config = TrainConfig(sampling=sampling, class_id=class_id)
    with pytest.raises(ConfigError):
        sample_split(labels, config, NUM_CLASSES)


def test_negative_class_id_raises():
    with pytest.raises(ConfigError):
        TrainConfig(sampling="under", class_id=-1)


@pytest.mark.parametrize("kwargs", [
    {"sampling": "balanced", "class_id": 2},
    {"sampling": "under", "class_id": None},
    {"sampling": "over", "class_id": None},
    {"sampling": "sideways", "class_id": None},
])
def test_sampling_and_class_id_must_agree(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"sampling": "balanced", "class_id": None, "majority_count": 5001},
    {"sampling": "under", "class_id": 2, "majority_count": 6000},
    {"sampling": "over", "class_id": 2, "majority_count": 5001},
])
def test_counts_above_available_raise(labels, kwargs):
    with pytest.raises(ConfigError):
        sample_split(labels, TrainConfig(seed=0, **kwargs), NUM_CLASSES)


def test_missing_class_raises(labels):
    """A dataset without any image of some class cannot give it its count."""
    no_class_9 = labels[labels != 9]
    with pytest.raises(ConfigError):
        sample_split(no_class_9, TrainConfig(sampling="balanced", majority_count=100),
                     NUM_CLASSES)


def test_too_few_images_for_validation_raises(labels):
    config = TrainConfig(sampling="under", class_id=0, ratio=50, majority_count=50)
    with pytest.raises(ConfigError):
        sample_split(labels, config, NUM_CLASSES)
