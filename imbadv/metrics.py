"""Accuracy per class, confusion matrices, and their CSV and PNG renderings."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
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


def plot_confusion(confusion: np.ndarray, class_names: tuple[str, ...], title: str, path: Path) -> Path:
    """Row-normalised heat map with the counts written in each cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                color="white" if shares[row, col] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_adversarial_grid(clean: np.ndarray, adversarial: np.ndarray, labels: np.ndarray,
                          clean_pred: np.ndarray, adv_pred: np.ndarray, class_names: tuple[str, ...],
                          title: str, path: Path) -> Path:
    """Clean images (top row) over their adversarial versions (bottom row), with predictions.

    Images are float (N, 3, H, W) in [0, 1].
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    count = len(clean)
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.8), squeeze=False)
    for i in range(count):
        for row, (images, predicted) in enumerate(((clean, clean_pred), (adversarial, adv_pred))):
            ax = axes[row, i]
            ax.imshow(np.clip(images[i].transpose(1, 2, 0), 0, 1), interpolation="nearest")
            ok = predicted[i] == labels[i]
            ax.set_title(class_names[predicted[i]], fontsize=8, color="green" if ok else "red")
            ax.axis("off")
        axes[0, i].text(0.5, 1.35, f"true: {class_names[labels[i]]}", fontsize=7, ha="center",
                        transform=axes[0, i].transAxes)
    axes[0, 0].text(-0.25, 0.5, "clean", rotation=90, va="center", transform=axes[0, 0].transAxes)
    axes[1, 0].text(-0.25, 0.5, "adversarial", rotation=90, va="center", transform=axes[1, 0].transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
