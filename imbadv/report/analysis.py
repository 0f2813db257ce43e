"""Table 1 ours beside the paper's, the claim checks and the measures beyond the paper.

Every number comes from finished runs (imbadv.tracking.results); nothing is recomputed. With several seeds
each cell is a mean with a 95% t-interval, and each claim is a paired difference across seeds. A study of
some classes only (`reproduce --classes`) is compared with the paper over the same classes: each column's
mean, ours and the paper's, is over the classes that have results in it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from imbadv.report.cells import TABLE1_CELLS
from imbadv.tracking.results import StudyResults
from imbadv.tracking.names import ADV_ACC, SUCCESS_RATE

TABLE1_EPS = 0.01  # section 3.2
QUOTE_TOLERANCE = 0.05  # how close a quoted mean must be, in accuracy (5 percentage points)
SHARE = (0.0, 1.0)  # the range of an accuracy or a share of images
# Presets that only check the plumbing: models of a few hundred images trained for seconds, whose
# numbers say nothing about the paper, so their claims get no verdict.
PLUMBING_PRESETS = ("smoke",)
# Table 1's columns: (column, sampling of the attacked model, gradient source).
COLUMNS = tuple((cell.column, cell.sampling, cell.source) for cell in TABLE1_CELLS)
# What the paper's text states beyond its Table 1 (whose column means, 53.8% black-box under-sampled
# and 25.8% balanced, come from the shipped paper_table1.csv).
PAPER_OVERSAMPLED_WHITEBOX_QUOTE = 0.45  # "around 45%" (its column mean is 44.2%)
PAPER_BALANCED_CLEAN_ACCURACY = 0.83  # "about 83%", all classes
# (true, predicted): the share of true-class images predicted as the other under attack, before ->
# after under-sampling the true class.
PAPER_CAT_DOG_CONFUSIONS = {("cat", "dog"): (0.31, 0.39), ("dog", "cat"): (0.38, 0.32)}


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


def is_plumbing(results: StudyResults) -> bool:
    return results.preset in PLUMBING_PRESETS


def study_classes(results: StudyResults) -> list[int]:
    """The target classes the study ran: those of its under- and over-sampled models (every class
    with results when it has none; the balanced model is evaluated on every class)."""
    ran = {e.class_id for e in results.evaluations if e.class_id is not None}
    if not ran:
        ran = {k for e in results.evaluations for k in range(len(results.class_names))
               if math.isfinite(e.per_class(ADV_ACC, k))}
    return sorted(k for k in ran if k < len(results.class_names))


def class_scope(class_names: tuple[str, ...] | list[str], ids: list[int]) -> str:
    """`all 10 classes` or `2 of 10 classes (cat, dog)`."""
    if len(ids) == len(class_names):
        return f"all {len(ids)} classes"
    return f"{len(ids)} of {len(class_names)} classes ({', '.join(class_names[k] for k in ids)})"


def study_scope(results: StudyResults) -> str:
    """What a report covers: `5 of 10 classes (airplane, ..., dog), 1 seed`."""
    seeds = len(results.seeds)
    return f"{class_scope(results.class_names, study_classes(results))}, {seeds} seed{'s' if seeds != 1 else ''}"


def cell_values(results: StudyResults, eps: float, sampling: str, source: str, class_id: int,
                metric: str = ADV_ACC) -> tuple[float, ...]:
    """One Table 1 cell across seeds: `metric` of the target class `class_id`."""
    out = []
    for seed in results.seeds:
        model_class = None if sampling == "balanced" else class_id
        evaluation = results.find(seed, eps, sampling, model_class, source)
        out.append(evaluation.per_class(metric, class_id) if evaluation else float("nan"))
    return tuple(out)


def table1(results: StudyResults, eps: float = TABLE1_EPS, metric: str = ADV_ACC) -> list[dict[str, object]]:
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


def with_results(rows: list[dict[str, object]], column: str) -> list[int]:
    """Class ids of the rows with results in `column` (in any seed)."""
    return [int(row["class_id"]) for row in rows if math.isfinite(row[column].mean)]


def _mean_over(rows: list[dict[str, object]], column: str, classes: list[int], n_seeds: int) -> Estimate:
    """Per seed, the mean of `column` over `classes`, as an Estimate across seeds."""
    chosen = [row for row in rows if row["class_id"] in classes]
    per_seed = [float(np.nanmean([row[column].values[s] for row in chosen]))
                if chosen and any(math.isfinite(row[column].values[s]) for row in chosen) else float("nan")
                for s in range(n_seeds)]
    return Estimate(tuple(per_seed), SHARE)


def column_means(rows: list[dict[str, object]], n_seeds: int) -> dict[str, Estimate]:
    """Per column: the mean over the classes with results in it, per seed, as an Estimate across seeds."""
    return {column: _mean_over(rows, column, with_results(rows, column), n_seeds) for column, _, _ in COLUMNS}


def _paper_mean(rows: list[dict[str, object]], column: str, classes: list[int]) -> float:
    values = [float(row[f"paper_{column}"]) for row in rows if row["class_id"] in classes]
    return float(np.mean(values)) if values else float("nan")


def paper_column_means(rows: list[dict[str, object]] | None = None) -> dict[str, float]:
    """The paper's column means: over its ten classes, or, given our Table 1 `rows`, over the classes
    that have results in each of our columns (the means to compare ours with)."""
    if rows is None:
        paper = paper_table()
        return {column: float(np.mean([float(r[column]) for r in paper])) for column, _, _ in COLUMNS}
    return {column: _paper_mean(rows, column, with_results(rows, column)) for column, _, _ in COLUMNS}


@dataclass(frozen=True)
class Claim:
    claim: str
    paper: str
    ours: str
    holds: bool | None  # None: these runs do not settle it (no runs, or the seeds' interval spans both answers)
    withheld: str = ""  # why no verdict is given (a plumbing preset): the check still ran, `holds` says how

    @property
    def verdict(self) -> str:
        if self.withheld:
            return f"n/a ({self.withheld})"
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


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%" if math.isfinite(value) else "-"


def _over(names: tuple[str, ...], classes: list[int]) -> str:
    """`` when `classes` is every class, else ` over 2 of 10 classes (cat, dog)`: what a mean covers."""
    if not classes:
        return " (no runs)"
    return "" if len(classes) == len(names) else f" over {class_scope(names, classes)}"


def _columns_claim(text: str, rows: list[dict[str, object]], names: tuple[str, ...], n_seeds: int,
                   larger: str, smaller: str) -> Claim:
    """`larger`'s column mean is above `smaller`'s, over the classes both columns have results for,
    paired across seeds; the paper's means are quoted over the same classes, the claim's subject (the
    sampled model, or the black-box attack) first."""
    both = [k for k in with_results(rows, larger) if k in with_results(rows, smaller)]
    ours = {c: _mean_over(rows, c, both, n_seeds) for c in (larger, smaller)}
    seeds = range(n_seeds)
    difference = _paired([ours[larger].values[s] for s in seeds], [ours[smaller].values[s] for s in seeds])
    quoted = (smaller, larger) if larger == "whitebox_balanced" else (larger, smaller)
    paper = " vs ".join(_pct(_paper_mean(rows, c, both)) for c in quoted)
    return Claim(text, paper + _over(names, both), f"difference {difference.text()} points", _holds(difference))


def _quoted_claim(text: str, rows: list[dict[str, object]], names: tuple[str, ...], n_seeds: int, column: str,
                  quoted: float, paper_text: str) -> Claim:
    """Our `column` mean near the figure the paper quotes for it; over fewer classes than the paper's
    ten, near the paper's own mean over those classes instead (a ten-class figure says nothing there)."""
    classes = with_results(rows, column)
    ours = _mean_over(rows, column, classes, n_seeds)
    target, scope = quoted, _over(names, classes)
    if scope:
        target = _paper_mean(rows, column, classes)
        paper_text += f"; {_pct(target)}{scope}"
    return Claim(text, paper_text, ours.text() + "%" + scope, _near(ours, target))


def _same_model_claim(rows: list[dict[str, object]], names: tuple[str, ...], n_seeds: int) -> Claim:
    """The paper's 'same model attack' figure is the balanced column's mean; the under-sampled white-box
    column is quoted beside it."""
    paper = paper_column_means()
    same, under_mean = _pct(paper["whitebox_balanced"]), _pct(paper["whitebox_undersample"])
    balanced = _quoted_claim(f"'Same model attack' leaves {same} (within {QUOTE_TOLERANCE:.0%}). The paper's {same} "
                             f"is the balanced column's mean; its under-sampled white-box column averages {under_mean}",
                             rows, names, n_seeds, "whitebox_balanced", paper["whitebox_balanced"],
                             f"{same} (balanced)")
    under = with_results(rows, "whitebox_undersample")
    scope = _over(names, under)
    return replace(balanced, paper=f"{balanced.paper} / {_pct(_paper_mean(rows, 'whitebox_undersample', under))} "
                                   f"(under-sampled){scope}",
                   ours=f"{balanced.ours} / {_mean_over(rows, 'whitebox_undersample', under, n_seeds).text()}%{scope}")


def claims(results: StudyResults, eps: float = TABLE1_EPS) -> list[Claim]:
    """Each claim of the paper checked against our runs (paired across seeds when there are several),
    over the classes the study has results for, quoting the paper's means over the same classes.
    A plumbing preset's claims carry no verdict."""
    rows = table1(results, eps)
    n, names = len(results.seeds), results.class_names
    paper = paper_column_means()
    out = [
        _columns_claim("Under-sampled models are more vulnerable than the balanced model (white-box accuracy lower)",
                       rows, names, n, "whitebox_balanced", "whitebox_undersample"),
        _columns_claim("Over-sampled models are more robust than the balanced model (white-box accuracy higher)",
                       rows, names, n, "whitebox_oversample", "whitebox_balanced"),
        _columns_claim("Black-box attacks are weaker than white-box attacks (under-sampled models)",
                       rows, names, n, "blackbox_undersample", "whitebox_undersample"),
        _columns_claim("Black-box attacks are weaker than white-box attacks (over-sampled models)",
                       rows, names, n, "blackbox_oversample", "whitebox_oversample"),
        _quoted_claim(f"Under-sampled models attacked black-box keep {_pct(paper['blackbox_undersample'])} on "
                      f"average (within {QUOTE_TOLERANCE:.0%})", rows, names, n, "blackbox_undersample",
                      paper["blackbox_undersample"], f"{_pct(paper['blackbox_undersample'])} (column mean)"),
        _same_model_claim(rows, names, n),
        _quoted_claim(f"Over-sampled models attacked white-box keep around {PAPER_OVERSAMPLED_WHITEBOX_QUOTE:.0%} "
                      f"(within {QUOTE_TOLERANCE:.0%})", rows, names, n, "whitebox_oversample",
                      PAPER_OVERSAMPLED_WHITEBOX_QUOTE, f"around {PAPER_OVERSAMPLED_WHITEBOX_QUOTE:.0%} (column mean "
                      f"{_pct(paper['whitebox_oversample'])})"),
        *(_success_claim(results, eps, sampling) for sampling in ("under", "over")),
        *_cat_dog_claims(results, eps),
    ]
    if is_plumbing(results):
        out = [replace(claim, withheld=results.preset) for claim in out]
    return out


def _success_claim(results: StudyResults, eps: float, sampling: str) -> Claim:
    """Black-box weaker than white-box, judged by the attack's success among the images the target had
    right before the attack: a low clean accuracy caps both columns' accuracies, not the success rate."""
    rows = table1(results, eps, metric=SUCCESS_RATE)
    whitebox, blackbox = f"whitebox_{sampling}sample", f"blackbox_{sampling}sample"
    both = [k for k in with_results(rows, whitebox) if k in with_results(rows, blackbox)]
    n = len(results.seeds)
    ours = {c: _mean_over(rows, c, both, n) for c in (whitebox, blackbox)}
    difference = _paired(list(ours[whitebox].values), list(ours[blackbox].values))
    return Claim(f"Black-box attacks succeed less often than white-box ones ({sampling}-sampled models; success "
                 "among the images each model had right before the attack)",
                 "not given (the paper reports accuracies)",
                 f"white-box {ours[whitebox].text()}% vs black-box {ours[blackbox].text()}%"
                 + _over(results.class_names, both),
                 _holds(difference))


def _cat_dog_claims(results: StudyResults, eps: float) -> list[Claim]:
    """The paper's cat/dog sentences, under both readings: the balanced model attacked against the
    under-sampled model attacked, and the under-sampled model clean against attacked."""
    names = list(results.class_names)
    if "cat" not in names or "dog" not in names:
        return []
    seeds = results.seeds
    out = []
    for (true_name, predicted_name), (before, after) in PAPER_CAT_DOG_CONFUSIONS.items():
        true, predicted = names.index(true_name), names.index(predicted_name)
        rises = after > before
        paper_text = f"{before:.0%} -> {after:.0%} ({'rises' if rises else 'falls'})"
        verb = "raises" if rises else "lowers"
        balanced = [confusion_share(results, s, "balanced", None, "adversarial", true, predicted, eps) for s in seeds]
        under = [confusion_share(results, s, "under", true, "adversarial", true, predicted, eps) for s in seeds]
        clean = [confusion_share(results, s, "under", true, "clean", true, predicted, eps) for s in seeds]
        pair = f"{true_name}->{predicted_name}"
        for reading, reference in (("the balanced model attacked -> the under-sampled model attacked", balanced),
                                   ("the under-sampled model clean -> attacked", clean)):
            change = _paired(under, reference) if rises else _paired(reference, under)
            text = f"{Estimate(tuple(reference), SHARE).text()}% -> {Estimate(tuple(under), SHARE).text()}%"
            out.append(Claim(f"Under-sampling {true_name} {verb} {pair} confusions under attack (read as {reading})",
                             paper_text, text, _holds(change)))
    return out
