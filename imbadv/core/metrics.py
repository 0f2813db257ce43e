"""Accuracy per class, attack success, relative drop, confusion matrices and their CSV form."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: rows = true class, columns = predicted class."""
    return sk_confusion_matrix(labels, predictions, labels=np.arange(num_classes))


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Share of each true class predicted correctly (NaN for a class with no images)."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / totals


def relative_drop(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """(clean - adversarial) / clean per class; NaN where clean accuracy is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(clean > 0, (clean - adversarial) / clean, np.nan)


def attack_success_rate(labels: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray, num_classes: int,
                        by_class: bool = True) -> np.ndarray:
    """Share of the images classified correctly before the attack that are wrong after it.

    Per true class (or one overall value with by_class=False); NaN where no image was correct.
    This separates vulnerability from clean accuracy, which the paper's Table 1 mixes.
    """
    correct = clean_pred == labels
    flipped = correct & (adv_pred != labels)
    groups = [np.ones_like(correct)] if not by_class else [labels == c for c in range(num_classes)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.array([flipped[g].sum() / correct[g].sum() if correct[g].any() else np.nan for g in groups])


def write_confusion_csv(confusion: np.ndarray, class_names: tuple[str, ...], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *class_names])
        for name, row in zip(class_names, confusion, strict=True):
            writer.writerow([name, *row.tolist()])
    return path
