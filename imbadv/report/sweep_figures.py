"""The sweep's figures: each class over the imbalance ratio, each long-tailed model's per-class accuracy
against the images each class trained on (imbadv.report.sweep computes what they draw).

Means in percent with their 95% intervals as bands or error bars, where there are several seeds.
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

from imbadv.config import PAPER_RATIO
from imbadv.report.analysis import Estimate
from imbadv.report.output import ATTACK_TITLES
from imbadv.report.sweep import CLEAN, NAN, PROFILES, Longtail, Point, seeds_text
from imbadv.tracking.results import StudyResults

LINES = ("-", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))  # one per attack, in the report's order
MARKERS = ("s", "^", "D", "v", "P")  # one per attack: where many classes leave no room for lines


def _x(profile: str, ratio: float) -> float:
    """Where a model sits on the figure's axis: under-sampling at 1/ratio, over-sampling at ratio."""
    return 1 / ratio if profile == "under" else ratio


def _series(ax: Axes, points: list[Point], box: str, measure: str, label: str, style: str) -> None:
    """One measure over both profiles as one line in percent, its interval as a band; a line without a
    balanced point (black-box) breaks at 1."""
    at = {_x(p.profile, p.ratio): getattr(p, measure) for p in points if p.box == box}
    if not at:
        return
    at.setdefault(1.0, Estimate((NAN,)))
    xs = sorted(at)
    means = np.array([at[x].mean for x in xs]) * 100
    bands = np.array([at[x].interval for x in xs], dtype=float) * 100
    line, = ax.plot(xs, means, style, marker="o", markersize=4, label=label)
    if np.isfinite(bands).any():
        ax.fill_between(xs, bands[:, 0], bands[:, 1], color=line.get_color(), alpha=0.15, linewidth=0)


def class_figure(results: StudyResults, points: list[Point], c: int, eps: float, path: Path) -> Path:
    """Class c over the ratio, one column per attack: accuracy with its clean ceiling, and success among
    correct; under-sampling left of the balanced model (1/ratio), over-sampling right (ratio)."""
    mine = [p for p in points if p.class_id == c and p.eps == eps]
    attacks = [a for a in results.attacks if any(p.attack == a for p in mine)]
    fig, axes = plt.subplots(2, len(attacks), figsize=(1.5 + 5 * len(attacks), 7.5), squeeze=False,
                             layout="constrained")
    ratios = sorted({p.ratio for p in mine})
    ticks = sorted({_x(profile, r) for r in ratios for profile in PROFILES})
    for column, attack in enumerate(attacks):
        chosen = [p for p in mine if p.attack == attack]
        top, bottom = axes[0, column], axes[1, column]
        _series(top, chosen, "white-box", "clean", "clean (ceiling)", "k--")
        for box, style in (("white-box", "C3-"), ("black-box", "C0-")):
            _series(top, chosen, box, "adv", box, style)
            _series(bottom, chosen, box, "success", box, style)
        top.set_title(f"{ATTACK_TITLES.get(attack, attack)}: accuracy on {results.class_names[c]}")
        bottom.set_title(f"{ATTACK_TITLES.get(attack, attack)}: success among correct")
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xticks(ticks, [f"1/{1 / x:g}" if x < 1 else f"{x:g}" for x in ticks], rotation=45)
            ax.minorticks_off()
            ax.set_xlim(ticks[0] / 1.3, ticks[-1] * 1.3)  # the same in both rows, whatever each draws
            ax.axvline(1.0, color="0.5", linewidth=0.8)
            for x in (1 / PAPER_RATIO, PAPER_RATIO) if PAPER_RATIO in ratios else ():
                ax.axvline(x, color="0.6", linestyle=":", linewidth=1)
            ax.set_ylim(-3, 103)
            ax.set_ylabel("%")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        bottom.set_xlabel("under-sampled (1/ratio)  |  balanced  |  over-sampled (ratio); dotted: the paper's 5")
    fig.suptitle(f"{results.class_names[c]} over the imbalance ratio, eps={eps:g}\n{results.dataset}, "
                 f"{results.preset} preset, {seeds_text(results)}")
    return _save(fig, path)


def longtail_figure(results: StudyResults, longtail: Longtail, path: Path) -> Path:
    """Per-class accuracy against the class's training count (log), one line per measure, each labelled
    with Spearman's rho, its worst class and its balanced accuracy."""
    labels = {m: _longtail_label(results, longtail, m) for m in longtail.accuracy}
    title = (f"Long-tailed model, ratio {longtail.ratio:g}, eps={longtail.eps:g}\n{results.dataset}, "
             f"{results.preset} preset, {seeds_text(results)}")
    return count_figure(results, longtail.counts, longtail.accuracy, labels, title, path)


def count_figure(results: StudyResults, counts: list[float], accuracy: dict[str, list[Estimate]],
                 labels: dict[str, str], title: str, path: Path) -> Path:
    """Per-class accuracy (by measure: "clean", "<box> <attack>") against each class's training count (log
    axis), classes named at their clean accuracy; `labels`: each measure's legend entry."""
    fig, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    order = sorted((x, k) for k, x in enumerate(counts) if math.isfinite(x))
    xs = [x for x, _ in order]
    for measure, row in accuracy.items():
        box, _, attack = measure.partition(" ")  # "clean", or "<box> <attack>"
        color = {"white-box": "C3", "black-box": "C0"}.get(box, "k")
        style = "--" if measure == CLEAN else LINES[results.attacks.index(attack) % len(LINES)]
        means = np.array([row[k].mean for _, k in order], dtype=float) * 100
        intervals = np.array([row[k].interval for _, k in order], dtype=float).reshape(-1, 2) * 100
        errors = np.nan_to_num(np.abs(intervals - means[:, None]).T)
        marker = "o" if measure == CLEAN else MARKERS[results.attacks.index(attack) % len(MARKERS)]
        ax.errorbar(xs, means, yerr=errors, fmt=marker, linestyle=style if len(xs) <= 12 else "none", color=color,
                    capsize=2, markersize=4, label=labels[measure])
    clean = accuracy[CLEAN]
    for x, k in order:
        ax.annotate(results.class_names[k], (x, clean[k].mean * 100), fontsize=7 if len(xs) <= 12 else 5,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.margins(x=0.08)
    ax.set_xlabel("images the class trained on (log scale)")
    ax.set_ylabel("accuracy on the class (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below: the lines keep the width
    ax.set_title(title)
    return _save(fig, path)


def _longtail_label(results: StudyResults, longtail: Longtail, measure: str) -> str:
    r, worst = longtail.correlation(measure), longtail.worst(measure)
    return (f"{measure}: rho {r.text()}; worst {results.class_names[worst] if worst is not None else '-'}; "
            f"balanced {longtail.balanced[measure].text()}%")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

