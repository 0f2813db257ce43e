"""The paper's figures remade from our runs (figures 3, 5 and 7), and robustness curves over eps.

Each figure is drawn over the classes the study ran (`reproduce --classes`). A cell without results
is drawn as missing: no bar, an "n/a" mark in its place. Error bars are drawn only where there is an
interval (several seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from imbadv.report.analysis import TABLE1_EPS, Estimate, cell_values, class_scope, confusion_share, study_classes
from imbadv.report.cells import CELLS
from imbadv.tracking.results import StudyResults
from imbadv.tracking.names import CLEAN_ACC, REL_DROP

PAIRS = (("cat", "dog"), ("dog", "cat"), ("automobile", "truck"), ("truck", "automobile"))
MISSING = "n/a"  # the mark drawn where a cell has no results


def _grouped_bars(ax: Axes, names: tuple[str, ...], series: dict[str, list[Estimate]]) -> None:
    """One bar per (group, series) in percent; a missing value gets no bar but an "n/a" mark."""
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, estimates) in enumerate(series.items()):
        at = x + (i - (len(series) - 1) / 2) * width
        means = np.array([e.mean for e in estimates], dtype=float).reshape(-1) * 100
        drawn = np.isfinite(means)
        ax.bar(at[drawn], means[drawn], width, label=label, color=f"C{i}")
        intervals = np.array([e.interval for e in estimates], dtype=float).reshape(-1, 2) * 100
        shown = drawn & np.isfinite(intervals).all(axis=1)
        if shown.any():  # one seed has no interval: no error bar rather than a zero-width one
            ax.errorbar(at[shown], means[shown], yerr=[means[shown] - intervals[shown, 0],
                                                       intervals[shown, 1] - means[shown]],
                        fmt="none", ecolor="black", elinewidth=1, capsize=2)
        for position in at[~drawn]:
            ax.text(position, 0.02, MISSING, transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                    va="bottom", fontsize=8, color="0.3")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    ax.grid(axis="y", alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _scope(results: StudyResults, classes: list[int]) -> str:
    """`` for every class, else `, 2 of 10 classes (cat, dog)`: for a title."""
    return "" if len(classes) == len(results.class_names) else f", {class_scope(results.class_names, classes)}"


# (label, sampling of the attacked model, gradient source) of every attacked model of Table 1.
ATTACKED = tuple((cell.label, cell.sampling, cell.source) for cell in CELLS)


def _per_class_bars(results: StudyResults, eps: float, metric: str, models: tuple[tuple[str, str, str], ...],
                    ylabel: str, title: str) -> Figure:
    """Bars of `metric` on class c for each model (label, sampling, source), grouped by the study's classes."""
    classes = study_classes(results)
    series = {label: [Estimate(cell_values(results, eps, sampling, source, c, metric)) for c in classes]
              for label, sampling, source in models}
    width = max(6.5, 4.0 + len(classes) * (0.35 + 0.12 * len(models)))
    fig, ax = plt.subplots(figsize=(width, 4.5), layout="constrained")
    _grouped_bars(ax, tuple(results.class_names[c] for c in classes), series)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{results.dataset}, {results.preset} preset{_scope(results, classes)}")
    return fig


def clean_accuracy_figure(results: StudyResults, eps: float = TABLE1_EPS) -> Figure:
    """Figure 3: clean accuracy on class c of the balanced, under-sampled(c) and over-sampled(c) models."""
    models = (("balanced", "balanced", "self"), ("under-sampled c", "under", "self"),
              ("over-sampled c", "over", "self"))
    return _per_class_bars(results, eps, CLEAN_ACC, models, "clean accuracy on class c (%)",
                           "Clean accuracy of each model on its class c")


def clean_accuracy(results: StudyResults, path: Path, eps: float = TABLE1_EPS) -> Path:
    return _save(clean_accuracy_figure(results, eps), path)


def relative_drop_figure(results: StudyResults, eps: float = TABLE1_EPS) -> Figure:
    """Figure 5: relative accuracy drop on class c, (clean - adversarial) / clean, per model and attack."""
    return _per_class_bars(results, eps, REL_DROP, ATTACKED, "relative drop on class c (%)",
                           f"Relative accuracy drop under FGSM, eps={eps:g}")


def relative_drop(results: StudyResults, path: Path, eps: float = TABLE1_EPS) -> Path:
    return _save(relative_drop_figure(results, eps), path)


def confusions_figure(results: StudyResults, eps: float = TABLE1_EPS) -> Figure:
    """Figure 7: cat<->dog and automobile<->truck confusion shares, before and after the attack, for the
    pairs whose first class the study under-sampled (all pairs when it under-sampled none of them)."""
    names = list(results.class_names)
    ran = {names[c] for c in study_classes(results)}
    pairs = [(a, b) for a, b in PAIRS if a in names and b in names]
    pairs = [(a, b) for a, b in pairs if a in ran] or pairs
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
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
    return fig


def confusions(results: StudyResults, path: Path, eps: float = TABLE1_EPS) -> Path:
    return _save(confusions_figure(results, eps), path)


def robustness_curves(results: StudyResults, path: Path) -> Path:
    """Target-class accuracy against eps, averaged over the study's classes: one line per sampling and attack."""
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    classes = study_classes(results)
    for (label, sampling, source), style in zip(ATTACKED, ("k-", "r-", "b-", "r--", "b--"), strict=True):
        means = []
        for eps in results.eps_values:
            values = [Estimate(cell_values(results, eps, sampling, source, c)).mean for c in classes]
            finite = [v for v in values if math.isfinite(v)]
            means.append(float(np.mean(finite)) * 100 if finite else float("nan"))
        ax.plot(results.eps_values, means, style, marker="o", label=label)
    ax.set_xlabel("eps (pixel units)")
    ax.set_ylabel("accuracy on the target class (%)")
    ax.set_title(f"Robustness curves\n{results.dataset}, {results.preset} preset{_scope(results, classes)}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
