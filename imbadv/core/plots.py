"""The figures of one run: a confusion matrix and a grid of clean beside adversarial images (PNG).

Figures are built with matplotlib's object API on the Agg canvas, not pyplot: no global figure
state, nothing to close, and safe beside other figures being drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Width of one character of a 10-point tick label, for margins that fit the longest class name.
_CHAR_INCHES = 0.085


def plot_confusion(confusion: np.ndarray, class_names: tuple[str, ...], title: str, path: Path) -> Path:
    """Row-normalised heat map with the counts written in each cell.

    The margins are set from the longest class name instead of measured by a layout engine, which
    would draw the figure twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    width, height = 7.5, 6.5
    name_inches = _CHAR_INCHES * max(map(len, class_names), default=1)
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=min(0.45, (0.55 + name_inches) / width), right=0.98,
                        bottom=min(0.45, (0.6 + 0.71 * name_inches) / height), top=0.93)
    ax = fig.add_subplot()
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
    fig.savefig(path, dpi=110)
    return path


def adversarial_grid_figure(clean: np.ndarray, adversarial: np.ndarray, labels: np.ndarray,
                            clean_pred: np.ndarray, adv_pred: np.ndarray, class_names: tuple[str, ...],
                            title: str) -> Figure:
    """Clean images (top row) over their adversarial versions (bottom row): the true class above each
    column, each prediction under its image (green when right, red when wrong).

    Images are float (N, 3, H, W) in [0, 1]. All images and labels share one axes, in pixel
    coordinates with a band for the labels above and below each row: one axes draws in a fraction of
    the time of one per image.
    """
    count, _, height, width = clean.shape
    gap, band = max(width // 4, 1), max(height // 2, 1)  # between columns; label band of each row
    row_tops = (band, 2 * band + height)
    fig = Figure(figsize=(max(1.5 * count, 4.0), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i in range(count):
        left = i * (width + gap)
        centre = left + width / 2
        ax.text(centre, band - 1, f"true: {class_names[labels[i]]}", ha="center", va="bottom", fontsize=8)
        for top, images, predicted in zip(row_tops, (clean, adversarial), (clean_pred, adv_pred), strict=True):
            ax.imshow(np.clip(images[i].transpose(1, 2, 0), 0, 1), interpolation="nearest",
                      extent=(left, left + width, top + height, top))
            ok = predicted[i] == labels[i]
            ax.text(centre, top + height + 1, f"pred: {class_names[predicted[i]]}", ha="center", va="top",
                    fontsize=8, color="green" if ok else "red")
    for top, name in zip(row_tops, ("clean", "adversarial"), strict=True):
        ax.text(-gap, top + height / 2, name, ha="right", va="center", rotation=90, fontsize=10)
    ax.set_xlim(-3 * gap, count * (width + gap) - gap)
    ax.set_ylim(2 * height + 3 * band, 0)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def plot_adversarial_grid(clean: np.ndarray, adversarial: np.ndarray, labels: np.ndarray,
                          clean_pred: np.ndarray, adv_pred: np.ndarray, class_names: tuple[str, ...],
                          title: str, path: Path) -> Path:
    """`adversarial_grid_figure` written to `path` (PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    adversarial_grid_figure(clean, adversarial, labels, clean_pred, adv_pred, class_names, title).savefig(
        path, dpi=110)
    return path
