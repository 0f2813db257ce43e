"""The paper's figures remade from our runs (figures 3, 5 and 7), and robustness curves over eps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from imbadv.report.analysis import TABLE1_EPS, Estimate, cell_values, confusion_share
from imbadv.report.cells import CELLS
from imbadv.tracking.results import StudyResults

PAIRS = (("cat", "dog"), ("dog", "cat"), ("automobile", "truck"), ("truck", "automobile"))


def _grouped_bars(ax, names: tuple[str, ...], series: dict[str, list[Estimate]]) -> None:
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, estimates) in enumerate(series.items()):
        means = np.array([e.mean for e in estimates]) * 100
        errors = np.array([[e.mean - e.interval[0], e.interval[1] - e.mean] for e in estimates]).T * 100
        errors = np.nan_to_num(errors)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, label=label, yerr=errors, capsize=2)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# (label, sampling of the attacked model, gradient source) of every attacked model of Table 1.
ATTACKED = tuple((cell.label, cell.sampling, cell.source) for cell in CELLS)


def _per_class_bars(results: StudyResults, path: Path, eps: float, metric: str,
                    models: tuple[tuple[str, str, str], ...], ylabel: str, title: str) -> Path:
    """Bars of `metric` on class c for each model (label, sampling, source), grouped by class."""
    names = results.class_names
    series = {label: [Estimate(cell_values(results, eps, sampling, source, c, metric)) for c in range(len(names))]
              for label, sampling, source in models}
    fig, ax = plt.subplots(figsize=(9 + len(models) / 5, 4.5))
    _grouped_bars(ax, names, series)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({results.dataset}, {results.preset} preset)")
    return _save(fig, path)


def clean_accuracy(results: StudyResults, path: Path, eps: float = TABLE1_EPS) -> Path:
    """Figure 3: clean accuracy on class c of the balanced, under-sampled(c) and over-sampled(c) models."""
    models = (("balanced", "balanced", "self"), ("under-sampled c", "under", "self"),
              ("over-sampled c", "over", "self"))
    return _per_class_bars(results, path, eps, "clean_acc", models, "clean accuracy on class c (%)",
                           "Clean accuracy of each model on its class c")


def relative_drop(results: StudyResults, path: Path, eps: float = TABLE1_EPS) -> Path:
    """Figure 5: relative accuracy drop on class c, (clean - adversarial) / clean, per model and attack."""
    return _per_class_bars(results, path, eps, "rel_drop", ATTACKED, "relative drop on class c (%)",
                           f"Relative accuracy drop under FGSM, eps={eps:g}")


def confusions(results: StudyResults, path: Path, eps: float = TABLE1_EPS) -> Path:
    """Figure 7: cat<->dog and automobile<->truck confusion shares, before and after the attack."""
    names = list(results.class_names)
    pairs = [(a, b) for a, b in PAIRS if a in names and b in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"{a} -> {b}\n(under-sampled {a})" for a, b in pairs]
    series: dict[str, list[Estimate]] = {}
    for label, sampling, kind in (("balanced, clean", "balanced", "clean"),
                                  ("balanced, attacked", "balanced", "adversarial"),
                                  ("under-sampled, clean", "under", "clean"),
                                  ("under-sampled, attacked", "under", "adversarial")):
        series[label] = []
        for a, b in pairs:
            true, predicted = names.index(a), names.index(b)
            model_class = None if sampling == "balanced" else true
            series[label].append(Estimate(tuple(confusion_share(results, s, sampling, model_class, kind, true,
                                                                predicted, eps) for s in results.seeds)))
    _grouped_bars(ax, tuple(labels), series)
    ax.set_ylabel("share of the true class predicted as the other (%)")
    ax.set_title(f"Similar-class confusions before and after FGSM (white-box, eps={eps:g})")
    return _save(fig, path)


def robustness_curves(results: StudyResults, path: Path) -> Path:
    """Target-class accuracy against eps, averaged over classes: one line per sampling and attack."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = len(results.class_names)
    for (label, sampling, source), style in zip(ATTACKED, ("k-", "r-", "b-", "r--", "b--"), strict=True):
        means = [np.nanmean([Estimate(cell_values(results, eps, sampling, source, c)).mean for c in range(n)]) * 100
                 for eps in results.eps_values]
        ax.plot(results.eps_values, means, style, marker="o", label=label)
    ax.set_xlabel("eps (pixel units)")
    ax.set_ylabel("accuracy on the target class (%)")
    ax.set_title(f"Robustness curves ({results.dataset}, {results.preset} preset)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
