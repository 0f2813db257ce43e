"""Imbalanced training sets and the early-stopping validation split (section 3.1, and beyond it).

`balanced` keeps every class at `majority_count`; `under` cuts class c to `majority_count / ratio`;
`over` keeps class c at `majority_count` and cuts every other class to `majority_count / ratio` (the
paper's ratio 5: 5,000 and 1,000). Beyond the paper: `longtail`, the exponential profile of
CIFAR-10-LT (Cui et al. 2019); `step`, the last half of the classes cut (Buda et al. 2018); and
`natural`, every training image as the dataset has it. The validation split is drawn per class from
the sampled images (stratified), so it has the training set's own imbalance and never touches the
test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imbadv.config import PAPER_RATIO, ConfigError, TrainConfig

MIN_TRAIN_IMAGES = 2  # fewest images a class may train on once its validation images are held out


@dataclass(frozen=True)
class Split:
    """Indices into the full training arrays: images to train on and images to validate on."""

    train: np.ndarray
    val: np.ndarray


def class_counts(sampling: str, class_id: int | None, num_classes: int, majority_count: int,
                 ratio: float | None = PAPER_RATIO, available: list[int] | None = None) -> list[int]:
    """Images wanted per class for a sampling profile; `available` (images per class in the dataset)
    is what `natural` keeps."""
    if class_id is not None and class_id >= num_classes:
        raise ConfigError(f"class id {class_id} is outside this dataset's {num_classes} classes: "
                          f"pass --class-id 0 to {num_classes - 1}")
    ratio = PAPER_RATIO if ratio is None else ratio
    cut = math.floor(majority_count / ratio)
    if sampling == "balanced":
        return [majority_count] * num_classes
    if sampling == "under":
        return [cut if k == class_id else majority_count for k in range(num_classes)]
    if sampling == "over":
        return [majority_count if k == class_id else cut for k in range(num_classes)]
    if sampling == "longtail":  # the LDAM-DRW code's img_max * (1/ratio)^(i/(C-1)), in class-id order
        return [math.floor(majority_count * ratio ** (-k / max(num_classes - 1, 1))) for k in range(num_classes)]
    if sampling == "step":
        return [cut if k >= num_classes - num_classes // 2 else majority_count for k in range(num_classes)]
    if sampling == "natural":
        if available is None:
            raise ValueError("natural sampling keeps every image: pass the dataset's per-class counts")
        return list(available)
    raise ConfigError(f"unknown sampling {sampling!r}: use one of balanced, under, over, longtail, step, natural")


def sample_split(labels: np.ndarray, config: TrainConfig, num_classes: int) -> Split:
    """Draw the sampled training set and its stratified validation split, deterministic in the seed."""
    available = np.bincount(labels, minlength=num_classes).tolist()
    wanted = class_counts(config.sampling, config.class_id, num_classes, config.majority_count, config.ratio,
                          available)
    rng = np.random.default_rng(config.seed)
    train_parts, val_parts = [], []
    for k, count in enumerate(wanted):
        pool = np.flatnonzero(labels == k)
        if len(pool) < count:
            raise ConfigError(f"class {k} has {len(pool)} training images, fewer than the {count} asked: "
                              f"lower --majority-count to {min(available)} or less, or use --sampling natural")
        chosen = rng.permutation(pool)[:count]
        n_val = max(1, round(count * config.val_fraction)) if config.val_fraction else 0
        if count - n_val < MIN_TRAIN_IMAGES:
            raise ConfigError(f"class {k} keeps {count} images, {count - n_val} to train on after the validation "
                              f"split: fewer than {MIN_TRAIN_IMAGES}; lower --ratio, raise --majority-count or "
                              "lower --val-fraction")
        val_parts.append(np.sort(chosen[:n_val]))
        train_parts.append(np.sort(chosen[n_val:]))
    return Split(train=np.concatenate(train_parts), val=np.concatenate(val_parts))
