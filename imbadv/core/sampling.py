"""Imbalanced training sets and the early-stopping validation split (section 3.1).

`balanced` keeps every class at `majority_count`; `under` cuts class c to `minority_count`;
`over` keeps class c at `majority_count` and cuts every other class to `minority_count`.
The validation split is drawn per class from the sampled images (stratified), so it has the
training set's own imbalance and never touches the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imbadv.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Split:
    """Indices into the full training arrays: images to train on and images to validate on."""

    train: np.ndarray
    val: np.ndarray


def class_counts(sampling: str, class_id: int | None, num_classes: int,
                 majority_count: int, minority_count: int) -> list[int]:
    """Images wanted per class for a sampling scheme."""
    if class_id is not None and class_id >= num_classes:
        raise ConfigError(f"class id {class_id} is outside this dataset's {num_classes} classes: "
                          f"pass --class-id 0 to {num_classes - 1}")
    if sampling == "balanced":
        return [majority_count] * num_classes
    if sampling == "under":
        return [minority_count if k == class_id else majority_count for k in range(num_classes)]
    if sampling == "over":
        return [majority_count if k == class_id else minority_count for k in range(num_classes)]
    raise ConfigError(f"unknown sampling {sampling!r}: use one of balanced, under, over")


def sample_split(labels: np.ndarray, config: TrainConfig, num_classes: int) -> Split:
    """Draw the sampled training set and its stratified validation split, deterministic in the seed."""
    wanted = class_counts(config.sampling, config.class_id, num_classes,
                          config.majority_count, config.minority_count)
    rng = np.random.default_rng(config.seed)
    train_parts, val_parts = [], []
    for k, count in enumerate(wanted):
        pool = np.flatnonzero(labels == k)
        if len(pool) < count:
            raise ConfigError(f"class {k} has {len(pool)} training images, fewer than the {count} asked: "
                              "lower --majority-count / --minority-count")
        chosen = rng.permutation(pool)[:count]
        n_val = max(1, round(count * config.val_fraction)) if config.val_fraction else 0
        if n_val >= count:
            raise ConfigError(f"class {k} keeps {count} images, too few for a validation split of "
                              f"{config.val_fraction}: raise the counts or lower --val-fraction")
        val_parts.append(np.sort(chosen[:n_val]))
        train_parts.append(np.sort(chosen[n_val:]))
    return Split(train=np.concatenate(train_parts), val=np.concatenate(val_parts))
