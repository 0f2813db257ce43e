"""The figures of one run: a confusion matrix and a grid of clean beside adversarial images (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


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


def adversarial_grid_figure(clean: np.ndarray, adversarial: np.ndarray, labels: np.ndarray,
                            clean_pred: np.ndarray, adv_pred: np.ndarray, class_names: tuple[str, ...],
                            title: str) -> Figure:
    """Clean images (top row) over their adversarial versions (bottom row): the true class above each
    column, each prediction under its image (green when right, red when wrong).

    Images are float (N, 3, H, W) in [0, 1]. Every label is an axis title or axis label, so the
    constrained layout makes room for it instead of drawing it over an image.
    """
    count = len(clean)
    fig, axes = plt.subplots(2, count, figsize=(max(1.5 * count, 4.0), 4.0), squeeze=False, layout="constrained")
    for i in range(count):
        axes[0, i].set_title(f"true: {class_names[labels[i]]}", fontsize=8)
        for row, (images, predicted) in enumerate(((clean, clean_pred), (adversarial, adv_pred))):
            ax = axes[row, i]
            ax.imshow(np.clip(images[i].transpose(1, 2, 0), 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            ok = predicted[i] == labels[i]
            ax.set_xlabel(f"pred: {class_names[predicted[i]]}", fontsize=8, labelpad=2,
                          color="green" if ok else "red")
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("adversarial")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_adversarial_grid(clean: np.ndarray, adversarial: np.ndarray, labels: np.ndarray,
                          clean_pred: np.ndarray, adv_pred: np.ndarray, class_names: tuple[str, ...],
                          title: str, path: Path) -> Path:
    """`adversarial_grid_figure` written to `path` (PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = adversarial_grid_figure(clean, adversarial, labels, clean_pred, adv_pred, class_names, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
