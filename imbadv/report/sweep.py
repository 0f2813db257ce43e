"""The sweep's report (`imbadv report --sweep`): each class's accuracy over the imbalance ratio, and the
long-tailed models' per-class accuracy against the images each class trained on.

Numbers come from finished evaluations (imbadv.tracking.results), means over seeds with 95% t-intervals as
in Table 1. Training counts come from the `train_counts` tag of each attacked model version (one registry
lookup per version): the tag holds what the training drew, whatever the preset, --train-options or the
data's own class sizes, so the sampling arithmetic is not repeated here.

Ratio 1 is the balanced model: the same point of the under- and the over-sampled curve. It is also the
black-box source, so it has no black-box point; the black-box curves start at the smallest ratio above 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from imbadv.report.analysis import SHARE, TABLE1_EPS, Estimate
from imbadv.tracking import names
from imbadv.tracking.results import Evaluation, StudyResults

PROFILES = ("under", "over")  # the class's own profiles; ratio 1 of both is the balanced model
BOXES = (("white-box", "self"), ("black-box", "balanced"))  # (box, source of the gradient)
BOX_OF = {source: box for box, source in BOXES}
COLLAPSE = 0.01  # accuracy on the class below which an attack has taken it: 1%
NOT_REACHED = "not reached"
ROUNDING = 1e-9  # a difference of shares this close to 0 is float rounding, not a change
CLEAN = "clean"  # the long-tail measure of accuracy before any attack
Counts = Mapping[str, Sequence[int]]  # target version "<name>/<version>" -> images each class trained on
NAN = float("nan")


@dataclass(frozen=True)
class Point:
    """Class c on one model (profile, ratio) under one attack: a row of curve.csv, across seeds."""

    class_id: int
    profile: str
    ratio: float
    attack: str
    box: str
    eps: float
    train_count: float  # images class c trained on (NaN: the version carries no count)
    clean: Estimate
    adv: Estimate
    success: Estimate  # the attack's success among the class's images the model had right
    others: Estimate  # the model's mean clean accuracy on every class but c: what c's share costs

    @property
    def seeds(self) -> int:
        return sum(math.isfinite(v) for v in self.adv.values)


@dataclass(frozen=True)
class Trend:
    """Class c's under-sampled side under one attack and box: where its accuracy collapses, and whether
    success among correct moves from the smallest ratio to the largest (paired over seeds)."""

    class_id: int
    attack: str
    box: str
    eps: float
    collapse_ratio: float | None  # the first ratio whose mean accuracy is below COLLAPSE; None: not reached
    first: float
    last: float
    success_first: Estimate
    success_last: Estimate
    success_change: Estimate  # success(last) - success(first)
    success_slope: Estimate  # change of success per tenfold ratio (least squares on log10 ratio, per seed)
    clean_change: Estimate  # clean(last) - clean(first)

    @property
    def reading(self) -> str:
        """The answer to "more vulnerable, or only less learned?" for this class and attack."""
        if not math.isfinite(self.success_first.mean):
            return "not measurable: the models get none of the class's images right"
        if self.first == self.last:
            return f"not measurable: success among correct is defined at ratio {self.first:g} only"
        success, clean = _direction(self.success_change), _direction(self.clean_change)
        if success == "rises":
            return "more vulnerable: success among correct rises"
        if success == "falls":
            return "less vulnerable: success among correct falls"
        if clean == "falls":
            return "less learned, not more vulnerable: clean accuracy falls, success among correct does not move"
        return "no settled change"


@dataclass(frozen=True)
class RankCorrelation:
    rho: float
    low: float
    high: float
    n: int  # classes

    def text(self) -> str:
        """`0.93 [0.72, 0.98]`, `-` when undefined."""
        if not math.isfinite(self.rho):
            return "-"
        return f"{self.rho:.2f}" + (f" [{self.low:.2f}, {self.high:.2f}]" if math.isfinite(self.low) else "")


class ByCount:
    """A model's per-class accuracies (`accuracy`, by measure) against its training counts (`counts`)."""

    counts: list[float]  # per class id
    accuracy: dict[str, list[Estimate]]  # measure ("clean", "<box> <attack>") -> per class id

    def correlation(self, measure: str) -> RankCorrelation:
        """Spearman's rho between training count and accuracy over the classes, with its 95% interval."""
        return spearman(self.counts, [e.mean for e in self.accuracy[measure]])

    def worst(self, measure: str) -> int | None:
        means = [e.mean for e in self.accuracy[measure]]
        finite = [k for k, m in enumerate(means) if math.isfinite(m)]
        return min(finite, key=lambda k: means[k]) if finite else None


@dataclass(frozen=True)
class Longtail(ByCount):
    """One long-tailed model (ratio, eps): per class its training count and each measure's accuracy."""

    ratio: float
    eps: float
    counts: list[float]
    accuracy: dict[str, list[Estimate]]
    balanced: dict[str, Estimate]  # measure -> mean of the per-class accuracies, across seeds


def _direction(estimate: Estimate) -> str:
    """"rises" or "falls" when the interval is wholly on one side of 0 (one seed: the sign), else "flat";
    a change within float rounding of 0 is none."""
    low, high = estimate.interval
    if not math.isfinite(estimate.mean):
        return "flat"
    if not math.isfinite(low):
        low = high = estimate.mean
    return "rises" if low > ROUNDING else "falls" if high < -ROUNDING else "flat"


def spearman(counts: Sequence[float], accuracies: Sequence[float], level: float = 0.95) -> RankCorrelation:
    """Spearman's rank correlation between training count and accuracy over the classes with both, and
    its interval by Fisher's z with the variance 1.06 / (n - 3) of Fieller, Hartley and Pearson (1957).

    A bootstrap would resample ten classes (ties and repeated classes in most resamples, an interval too
    narrow) or three seeds; scipy.stats gives rho, not its interval. NaN bounds for 3 classes or fewer."""
    pairs = [(c, a) for c, a in zip(counts, accuracies, strict=True) if math.isfinite(c) and math.isfinite(a)]
    n = len(pairs)
    if n < 2 or len({c for c, _ in pairs}) < 2 or len({a for _, a in pairs}) < 2:
        return RankCorrelation(NAN, NAN, NAN, n)
    rho = float(stats.spearmanr(*zip(*pairs, strict=True)).statistic)
    if n <= 3:
        return RankCorrelation(rho, NAN, NAN, n)
    z = math.atanh(max(-1 + 1e-12, min(1 - 1e-12, rho)))  # rho of +-1: an interval of that one point
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(1.06 / (n - 3))
    return RankCorrelation(rho, math.tanh(z - half), math.tanh(z + half), n)


def registered_train_counts(results: StudyResults) -> dict[str, tuple[int, ...]]:
    """Each attacked model version's `train_counts` tag, one registry lookup per version (none without it)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, counts = MlflowClient(), {}
    for version in sorted({e.target_version for e in results.evaluations if "/" in e.target_version}):
        name, _, number = version.rpartition("/")
        try:
            text = client.get_model_version(name, number).tags.get(names.VERSION_TRAIN_COUNTS, "")
        except MlflowException:
            continue  # deleted since: its points get no count
        if text:
            counts[version] = tuple(int(v) for v in text.split(","))
    return counts


def sweep_classes(results: StudyResults) -> list[int]:
    return sorted({e.class_id for e in results.evaluations if e.sampling in PROFILES and e.class_id is not None})


def sweep_ratios(results: StudyResults) -> list[float]:
    """The ratios of the class models, and 1 (the balanced model)."""
    return sorted({1.0} | {e.ratio for e in results.evaluations if e.sampling in PROFILES and e.ratio})


def longtail_ratios(results: StudyResults) -> list[float]:
    return sorted({e.ratio for e in results.evaluations if e.sampling == "longtail" and e.ratio})


def report_eps(results: StudyResults) -> float:
    """The eps of the figures and tables: the paper's 0.01 when it ran, else the smallest (CSVs hold all)."""
    return TABLE1_EPS if TABLE1_EPS in results.eps_values else results.eps_values[0]


def _count(found: list[Evaluation | None], counts: Counts, k: int) -> float:
    """Images class k trained on in the seeds' models (their mean, should seeds ever differ)."""
    values = [counts[e.target_version][k] for e in found if e and len(counts.get(e.target_version, ())) > k]
    return float(np.mean(values)) if values else NAN


def _estimate(found: list[Evaluation | None], metric: str, k: int) -> Estimate:
    return Estimate(tuple(e.per_class(metric, k) if e else NAN for e in found), SHARE)


def _others(found: list[Evaluation | None], clean: Mapping[tuple, list[float]], c: int) -> Estimate:
    """Per seed, the mean clean accuracy of the evaluated model on the classes other than c (`clean`:
    `StudyResults.clean_by_model`)."""
    values = [clean.get(e.model) if e else None for e in found]
    return Estimate(tuple(_mean([v for j, v in enumerate(row) if j != c]) if row else NAN for row in values), SHARE)


def curve(results: StudyResults, counts: Counts) -> list[Point]:
    """Every class's points: (eps, attack, class, box, profile, ratio), where any seed has an evaluation."""
    index = {e.key: e for e in results.evaluations}
    clean = results.clean_by_model()
    points = []
    for eps in results.eps_values:
        for attack in results.attacks:
            for c in sweep_classes(results):
                for box, source in BOXES:
                    for profile in PROFILES:
                        for ratio in sweep_ratios(results):
                            model = ("balanced", None, source, None) if ratio == 1.0 else (profile, c, source, ratio)
                            found = [index.get((attack, seed, eps, *model)) for seed in results.seeds]
                            if any(found):
                                points.append(Point(c, profile, ratio, attack, box, eps, _count(found, counts, c),
                                                    *(_estimate(found, m, c) for m in (names.CLEAN_ACC, names.ADV_ACC,
                                                                                       names.SUCCESS_RATE)),
                                                    _others(found, clean, c)))
    return points


def _slope(points: list[Point], seed: int) -> float:
    """Least-squares change of success per tenfold ratio in one seed."""
    xy = [(math.log10(p.ratio), p.success.values[seed]) for p in points if math.isfinite(p.success.values[seed])]
    if len({x for x, _ in xy}) < 2:
        return NAN
    return float(np.polyfit(*zip(*xy, strict=True), 1)[0])


def trends(points: list[Point]) -> list[Trend]:
    """Per class, attack, box and eps: the under-sampled side's collapse ratio and success trend."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        if p.profile == "under":
            groups.setdefault((p.class_id, p.attack, p.box, p.eps), []).append(p)
    out = []
    for (c, attack, box, eps), side in groups.items():
        side = sorted(side, key=lambda p: p.ratio)
        collapse = next((p.ratio for p in side if p.adv.mean < COLLAPSE), None)
        defined = [p for p in side if math.isfinite(p.success.mean)]
        first, last = (defined[0], defined[-1]) if defined else (side[0], side[-1])
        seeds = range(len(first.adv.values))
        change = Estimate(tuple(last.success.values[s] - first.success.values[s] for s in seeds))
        clean = Estimate(tuple(last.clean.values[s] - first.clean.values[s] for s in seeds))
        if first is last:
            change = clean = Estimate((NAN,))
        out.append(Trend(c, attack, box, eps, collapse, first.ratio, last.ratio, first.success, last.success,
                         change, Estimate(tuple(_slope(side, s) for s in seeds)), clean))
    return out


def longtails(results: StudyResults, counts: Counts) -> list[Longtail]:
    """Each long-tailed model's per-class accuracy: clean, then each attack white-box and black-box."""
    index = {e.key: e for e in results.evaluations}
    classes = range(len(results.class_names))
    out = []
    for ratio in longtail_ratios(results):
        for eps in results.eps_values:
            found = {(attack, source): [index.get((attack, seed, eps, "longtail", None, source, ratio))
                                        for seed in results.seeds]
                     for attack in results.attacks for _, source in BOXES}
            # clean accuracy is the model's whatever the attack: each seed's first white-box evaluation
            clean = [next((e[i] for (_, source), e in found.items() if source == "self" and e[i]), None)
                     for i in range(len(results.seeds))]
            accuracy = {CLEAN: [_estimate(clean, names.CLEAN_ACC, k) for k in classes]}
            for (attack, source), evaluations in found.items():
                if any(evaluations):
                    accuracy[f"{BOX_OF[source]} {attack}"] = [_estimate(evaluations, names.ADV_ACC, k) for k in classes]
            if not any(clean):
                continue
            every = [e for evaluations in found.values() for e in evaluations]
            balanced = {m: Estimate(tuple(_mean([row[k].values[s] for k in classes]) for s in range(len(clean))),
                                    SHARE) for m, row in accuracy.items()}
            out.append(Longtail(ratio, eps, [_count(every, counts, k) for k in classes], accuracy, balanced))
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else NAN


def seeds_text(results: StudyResults) -> str:
    return f"{len(results.seeds)} seed{'s' if len(results.seeds) != 1 else ''}"
