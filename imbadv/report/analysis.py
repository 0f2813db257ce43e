"""Table 1 ours beside the paper's, the claim checks and the measures beyond the paper.

Every number comes from finished runs (imbadv.tracking.results); nothing is recomputed. With several seeds
each cell is a mean with a 95% t-interval, and each claim is a paired difference across seeds.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from imbadv.report.cells import TABLE1_CELLS
from imbadv.tracking.results import StudyResults

TABLE1_EPS = 0.01  # section 3.2
QUOTE_TOLERANCE = 0.05  # how close a quoted mean must be, in accuracy (5 percentage points)
SHARE = (0.0, 1.0)  # the range of an accuracy or a share of images
# Table 1's columns: (column, sampling of the attacked model, gradient source).
COLUMNS = tuple((cell.column, cell.sampling, cell.source) for cell in TABLE1_CELLS)


def paper_table() -> list[dict[str, str]]:
    """The paper's Table 1 (shipped with the package)."""
    text = (Path(__file__).parent / "reference" / "paper_table1.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% confidence interval (NaN bounds with one seed).

    `bounds` is the range the quantity can take (an accuracy: 0 to 1); the interval is cut to it.
    """

    values: tuple[float, ...]
    bounds: tuple[float, float] | None = None

    @property
    def mean(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        low, high = confidence_interval(self.values)
        if self.bounds is None or not math.isfinite(low):
            return low, high
        return max(low, self.bounds[0]), min(high, self.bounds[1])

    def text(self, percent: bool = True) -> str:
        scale = 100 if percent else 1
        if not math.isfinite(self.mean):
            return "-"
        low, high = self.interval
        if math.isfinite(low):
            return f"{self.mean * scale:.1f} [{low * scale:.1f}, {high * scale:.1f}]"
        return f"{self.mean * scale:.1f}"


def confidence_interval(values: tuple[float, ...] | list[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval of the mean; NaN bounds for fewer than two finite values."""
    finite = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if len(finite) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(finite) - 1) * finite.std(ddof=1) / math.sqrt(len(finite))
    return float(finite.mean() - half), float(finite.mean() + half)


def cell_values(results: StudyResults, eps: float, sampling: str, source: str, class_id: int,
                metric: str = "adv_acc") -> tuple[float, ...]:
    """One Table 1 cell across seeds: `metric` of the target class `class_id`."""
    out = []
    for seed in results.seeds:
        model_class = None if sampling == "balanced" else class_id
        evaluation = results.find(seed, eps, sampling, model_class, source)
        out.append(evaluation.per_class(metric, class_id) if evaluation else float("nan"))
    return tuple(out)


def table1(results: StudyResults, eps: float = TABLE1_EPS, metric: str = "adv_acc") -> list[dict[str, object]]:
    """Rows per class: for each column, our Estimate and the paper's value."""
    paper = {int(row["class_id"]): row for row in paper_table()}
    rows = []
    for class_id, name in enumerate(results.class_names):
        row: dict[str, object] = {"class_id": class_id, "class_name": name}
        for column, sampling, source in COLUMNS:
            row[column] = Estimate(cell_values(results, eps, sampling, source, class_id, metric), SHARE)
            row[f"paper_{column}"] = float(paper[class_id][column]) if class_id in paper else float("nan")
        rows.append(row)
    return rows


def column_means(rows: list[dict[str, object]], n_seeds: int) -> dict[str, Estimate]:
    """Per column: the mean over classes, per seed, as an Estimate across seeds."""
    means = {}
    for column, _, _ in COLUMNS:
        per_seed = [float(np.nanmean([row[column].values[s] for row in rows])) if rows else float("nan")
                    for s in range(n_seeds)]
        means[column] = Estimate(tuple(per_seed), SHARE)
    return means


def paper_column_means() -> dict[str, float]:
    rows = paper_table()
    return {column: float(np.mean([float(r[column]) for r in rows])) for column, _, _ in COLUMNS}


@dataclass(frozen=True)
class Claim:
    claim: str
    paper: str
    ours: str
    holds: bool | None  # None: these runs do not settle it (no runs, or the seeds' interval spans both answers)

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not settled"}[self.holds]


def _paired(a: list[float], b: list[float]) -> Estimate:
    return Estimate(tuple(x - y for x, y in zip(a, b, strict=True)))


def _holds(difference: Estimate) -> bool | None:
    """A positive difference. With several seeds the whole interval must be above 0 (below 0: it does
    not hold; across 0: not settled); with one seed, the sign of the single difference."""
    if not math.isfinite(difference.mean):
        return None
    low, high = difference.interval
    if not math.isfinite(low):
        return bool(difference.mean > 0)
    return True if low > 0 else False if high < 0 else None


def _near(estimate: Estimate, quoted: float) -> bool | None:
    """A quoted figure: ours within QUOTE_TOLERANCE of it. With several seeds the whole interval must
    lie within that band (wholly outside it: it does not hold; partly: not settled)."""
    if not math.isfinite(estimate.mean):
        return None
    low, high = estimate.interval
    if not math.isfinite(low):
        return bool(abs(estimate.mean - quoted) <= QUOTE_TOLERANCE)
    band_low, band_high = quoted - QUOTE_TOLERANCE, quoted + QUOTE_TOLERANCE
    if band_low <= low and high <= band_high:
        return True
    return False if high < band_low or low > band_high else None


def confusion_share(results: StudyResults, seed: int, sampling: str, class_id: int | None, kind: str,
                    true: int, predicted: int, eps: float = TABLE1_EPS) -> float:
    """Share of true-class images predicted as `predicted`, white-box, clean or adversarial."""
    evaluation = results.find(seed, eps, sampling, class_id, "self")
    if evaluation is None or kind not in evaluation.confusion:
        return float("nan")
    row = evaluation.confusion[kind][true]
    return float(row[predicted] / row.sum()) if row.sum() else float("nan")


def claims(results: StudyResults, eps: float = TABLE1_EPS) -> list[Claim]:
    """Each claim of the paper checked against our runs (paired across seeds when there are several)."""
    rows = table1(results, eps)
    n = len(results.seeds)
    means = column_means(rows, n)
    paper = paper_column_means()
    seeds = range(n)
    col = {c: [means[c].values[s] for s in seeds] for c, _, _ in COLUMNS}
    pct = lambda v: f"{v * 100:.1f}%"  # noqa: E731
    out = [
        Claim("Under-sampled models are more vulnerable than the balanced model (white-box accuracy lower)",
              f"{pct(paper['whitebox_undersample'])} vs {pct(paper['whitebox_balanced'])}",
              f"difference {_paired(col['whitebox_balanced'], col['whitebox_undersample']).text()} points",
              _holds(_paired(col["whitebox_balanced"], col["whitebox_undersample"]))),
        Claim("Over-sampled models are more robust than the balanced model (white-box accuracy higher)",
              f"{pct(paper['whitebox_oversample'])} vs {pct(paper['whitebox_balanced'])}",
              f"difference {_paired(col['whitebox_oversample'], col['whitebox_balanced']).text()} points",
              _holds(_paired(col["whitebox_oversample"], col["whitebox_balanced"]))),
        Claim("Black-box attacks are weaker than white-box attacks (under-sampled models)",
              f"{pct(paper['blackbox_undersample'])} vs {pct(paper['whitebox_undersample'])}",
              f"difference {_paired(col['blackbox_undersample'], col['whitebox_undersample']).text()} points",
              _holds(_paired(col["blackbox_undersample"], col["whitebox_undersample"]))),
        Claim("Black-box attacks are weaker than white-box attacks (over-sampled models)",
              f"{pct(paper['blackbox_oversample'])} vs {pct(paper['whitebox_oversample'])}",
              f"difference {_paired(col['blackbox_oversample'], col['whitebox_oversample']).text()} points",
              _holds(_paired(col["blackbox_oversample"], col["whitebox_oversample"]))),
        Claim(f"Under-sampled models attacked black-box keep 53.8% on average (within {QUOTE_TOLERANCE:.0%})",
              "53.8% (column mean 53.8%)", means["blackbox_undersample"].text() + "%",
              _near(means["blackbox_undersample"], 0.538)),
        Claim(f"'Same model attack' leaves 25.8% (within {QUOTE_TOLERANCE:.0%}). The paper's 25.8% is the "
              "balanced column's mean; its under-sampled white-box column averages 14.2%",
              "25.8% (balanced) / 14.2% (under-sampled)",
              f"{means['whitebox_balanced'].text()}% / {means['whitebox_undersample'].text()}%",
              _near(means["whitebox_balanced"], 0.258)),
        Claim(f"Over-sampled models attacked white-box keep around 45% (within {QUOTE_TOLERANCE:.0%})",
              "around 45% (column mean 44.2%)", means["whitebox_oversample"].text() + "%",
              _near(means["whitebox_oversample"], 0.45)),
    ]
    out += _cat_dog_claims(results, eps)
    return out


def _cat_dog_claims(results: StudyResults, eps: float) -> list[Claim]:
    names = list(results.class_names)
    if "cat" not in names or "dog" not in names:
        return []
    cat, dog = names.index("cat"), names.index("dog")
    seeds = results.seeds
    out = []
    for true, predicted, paper_text, direction, label in (
            (cat, dog, "31% -> 39% (rises)", 1, "Under-sampling cat raises cat->dog confusions under attack"),
            (dog, cat, "38% -> 32% (falls)", -1, "Under-sampling dog lowers dog->cat confusions under attack")):
        balanced = [confusion_share(results, s, "balanced", None, "adversarial", true, predicted, eps) for s in seeds]
        under = [confusion_share(results, s, "under", true, "adversarial", true, predicted, eps) for s in seeds]
        change = _paired(under, balanced) if direction > 0 else _paired(balanced, under)
        text = f"{Estimate(tuple(balanced), SHARE).text()}% -> {Estimate(tuple(under), SHARE).text()}%"
        out.append(Claim(label, paper_text, text, _holds(change)))
    return out
