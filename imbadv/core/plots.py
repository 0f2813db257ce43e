"""The figures of one run: a confusion matrix and a grid of clean beside adversarial images (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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
