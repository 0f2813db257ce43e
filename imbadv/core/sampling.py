"""Imbalanced training sets and the early-stopping validation split (section 3.1, and beyond it).

`balanced` keeps every class at `majority_count`; `under` cuts class c to `majority_count / ratio`;
`over` keeps class c at `majority_count` and cuts every other class to `majority_count / ratio` (the
paper's ratio 5: 5,000 and 1,000). Beyond the paper: `longtail`, the exponential profile of
CIFAR-10-LT (Cui et al. 2019); `step`, the last half of the classes cut (Buda et al. 2018); and
`natural`, every training image as the dataset has it. The validation split is drawn per class from
the sampled images (stratified), so it has the training set's own imbalance and never touches the
test set.

Where the data names groups of near-duplicates (GTSRB's tracks: about 30 frames of one physical
sign), a class is cut to whole groups, in random order, the last one cut to the count, and its
validation images are whole groups of those, drawn until the validation share is reached: no group
straddles training and validation, and a cut class is rare in physical signs, as a naturally rare
class is, rather than a few frames of every sign of a common one. Without groups, image by image.
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


def largest_majority_count(sampling: str, class_id: int | None, available: list[int],
                           ratio: float | None = PAPER_RATIO) -> int:
    """The largest `--majority-count` whose profile every class has the images for (0: none has)."""
    def fits(count: int) -> bool:
        return all(w <= a for w, a in zip(class_counts(sampling, class_id, len(available), count, ratio, available),
                                          available, strict=True))

    low, high = 0, max(available, default=0)  # every profile keeps some class at the majority count
    while low < high:  # counts never fall as the majority count rises
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def sample_split(labels: np.ndarray, config: TrainConfig, num_classes: int,
                 groups: np.ndarray | None = None) -> Split:
    """Draw the sampled training set and its stratified validation split, deterministic in the seed.

    `groups` (one id per training image, or None) keeps each group whole, in the cut and in the split.
    """
    available = np.bincount(labels, minlength=num_classes).tolist()
    wanted = class_counts(config.sampling, config.class_id, num_classes, config.majority_count, config.ratio,
                          available)
    for k, count in enumerate(wanted):
        if available[k] < count:
            largest = largest_majority_count(config.sampling, config.class_id, available, config.ratio)
            fix = f"lower --majority-count to {largest} or less" if largest else "give every class images"
            raise ConfigError(f"class {k} has {available[k]} training images, fewer than the {count} asked: {fix}, "
                              "or use --sampling natural")
    rng = np.random.default_rng(config.seed)
    train_parts, val_parts = [], []
    for k, count in enumerate(wanted):
        pool = np.flatnonzero(labels == k)
        n_val = max(1, round(count * config.val_fraction)) if config.val_fraction else 0
        if groups is None:
            chosen = rng.permutation(pool)[:count]
            val, train = chosen[:n_val], chosen[n_val:]
        else:
            val, train = _whole_groups(pool, groups[pool], count, n_val, rng)
            if n_val and not len(train):
                kept = len(np.unique(groups[val]))
                raise ConfigError(f"class {k} keeps {count} images in {kept} group{'s' if kept > 1 else ''}, all held "
                                  "out by the validation split of whole groups: raise --majority-count, lower --ratio "
                                  "or lower --val-fraction (0: none held out)")
        if len(train) < MIN_TRAIN_IMAGES:
            raise ConfigError(f"class {k} keeps {count} images, {len(train)} to train on after the validation "
                              f"split: fewer than {MIN_TRAIN_IMAGES}; lower --ratio, raise --majority-count or "
                              "lower --val-fraction")
        val_parts.append(np.sort(val))
        train_parts.append(np.sort(train))
    return Split(train=np.concatenate(train_parts), val=np.concatenate(val_parts))


def _whole_groups(pool: np.ndarray, pool_groups: np.ndarray, count: int, n_val: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices of one class: `count` images of whole groups in random order (the last
    group cut to the count), the first of them whole to validation until it holds `n_val` images or more."""
    kept: list[np.ndarray] = []
    taken = 0
    for group in rng.permutation(np.unique(pool_groups)):
        if taken == count:
            break
        members = pool[pool_groups == group]
        if taken + len(members) > count:
            members = rng.permutation(members)[:count - taken]
        kept.append(members)
        taken += len(members)
    held = np.cumsum([len(members) for members in kept])
    split_at = int(np.searchsorted(held, n_val)) + 1 if n_val else 0  # the first groups holding n_val or more
    empty = np.empty(0, pool.dtype)
    return np.concatenate(kept[:split_at] or [empty]), np.concatenate(kept[split_at:] or [empty])
