"""The natural-imbalance report's numbers (`imbadv report --natural`): for a dataset that comes
imbalanced (GTSRB), each natural model's per-class accuracy against the images each class trained on,
and the confusions an attack creates between classes that look alike.

Numbers come from finished evaluations (imbadv.tracking.results) of `imbadv natural`'s models: means
over seeds with 95% t-intervals, as in Table 1. The black-box attacks come from each target's peer (the
same model of the study's next seed). Training counts are each version's `train_counts` tag.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from imbadv.report.analysis import SHARE, Estimate
from imbadv.report.sweep import CLEAN, NAN, ByCount, Counts, _count, _estimate
from imbadv.tracking import names
from imbadv.tracking.results import Evaluation, StudyResults

BOXES = (("white-box", "self"), ("black-box", "peer"))  # (box, source of the gradient)
Remedy = tuple[str, str, float]  # (loss, resample, post-hoc tau)


def remedy_label(remedy: Remedy) -> str:
    loss, resample, tau = remedy
    return loss + ("" if resample == "none" else f"+{resample}") + (f"+posthoc{tau:g}" if tau else "")


@dataclass(frozen=True)
class NaturalModel(ByCount):
    """The natural profile under one remedy at one eps: per class its training count and, per measure
    ("clean", "<box> <attack>"), its accuracy and the attack's success among correct, across seeds."""

    remedy: Remedy
    eps: float
    counts: list[float]  # per class id
    accuracy: dict[str, list[Estimate]]
    success: dict[str, list[Estimate]]  # attacks only
    mean_class: dict[str, Estimate]  # per seed, the mean of the per-class accuracies (balanced accuracy)
    worst_class: dict[str, Estimate]  # per seed, the lowest per-class accuracy

    @property
    def label(self) -> str:
        return remedy_label(self.remedy)

    def by_count(self) -> list[int]:
        """Class ids from the fewest training images to the most (ties by id)."""
        return sorted(range(len(self.counts)), key=lambda k: (self.counts[k] if math.isfinite(self.counts[k])
                                                              else math.inf, k))


def natural_remedies(results: StudyResults) -> list[Remedy]:
    """The remedies the natural profile was attacked under, plain cross-entropy first."""
    found = {e.remedy for e in results.evaluations if e.sampling == "natural"}
    return sorted(found, key=lambda r: (r != ("ce", "none", 0.0), r))


def natural_models(results: StudyResults, counts: Counts) -> list[NaturalModel]:
    """Each remedy's natural model at each eps: clean accuracy, then each attack white-box and black-box."""
    index = {(e.attack, e.seed, e.eps, e.source, e.remedy): e for e in results.evaluations if e.sampling == "natural"}
    classes = range(len(results.class_names))
    seeds = results.seeds
    out = []
    for remedy in natural_remedies(results):
        for eps in results.eps_values:
            found = {(attack, source): [index.get((attack, seed, eps, source, remedy)) for seed in seeds]
                     for attack in results.attacks for _, source in BOXES}
            # clean accuracy is the model's whatever the attack: each seed's first white-box evaluation
            clean = [next((runs[i] for (_, source), runs in found.items() if source == "self" and runs[i]), None)
                     for i in range(len(seeds))]
            if not any(clean):
                continue
            accuracy = {CLEAN: [_estimate(clean, names.CLEAN_ACC, k) for k in classes]}
            success: dict[str, list[Estimate]] = {}
            for (attack, source), runs in found.items():
                if any(runs):
                    measure = f"{dict((s, b) for b, s in BOXES)[source]} {attack}"
                    accuracy[measure] = [_estimate(runs, names.ADV_ACC, k) for k in classes]
                    success[measure] = [_estimate(runs, names.SUCCESS_RATE, k) for k in classes]
            every = [e for runs in found.values() for e in runs]
            out.append(NaturalModel(
                remedy, eps, [_count(every, counts, k) for k in classes], accuracy, success,
                {m: _per_seed(row, len(seeds), np.mean) for m, row in accuracy.items()},
                {m: _per_seed(row, len(seeds), np.min) for m, row in accuracy.items()}))
    return out


def _per_seed(row: list[Estimate], seeds: int, reduce) -> Estimate:
    """An estimate over seeds of `reduce` (mean, min) over the classes with a value in that seed."""
    values = []
    for s in range(seeds):
        finite = [e.values[s] for e in row if math.isfinite(e.values[s])]
        values.append(float(reduce(finite)) if finite else NAN)
    return Estimate(tuple(values), SHARE)


def look_alike_families(class_names: tuple[str, ...]) -> list[list[int]]:
    """Classes whose names are equal once their numbers are removed (`speed-limit-20` ... `speed-limit-120`):
    signs that differ in a digit or two. Families of two classes or more, by their first id."""
    stems: dict[str, list[int]] = {}
    for k, name in enumerate(class_names):
        stem = re.sub(r"[-_ ]*\d+(\.\d+)?", "", name).strip("-_ ")
        if stem != name.strip("-_ "):
            stems.setdefault(stem, []).append(k)
    return [members for members in stems.values() if len(members) > 1]


@dataclass(frozen=True)
class Confusion:
    """True class i taken for class j: the share of i's attacked images, clean and after the attack, across
    seeds; `created` is their difference, paired by seed."""

    true: int
    predicted: int
    clean: Estimate
    attacked: Estimate
    created: Estimate


def _shares(e: Evaluation | None, kind: str) -> np.ndarray | None:
    if e is None or kind not in e.confusion:
        return None
    matrix = e.confusion[kind].astype(float)
    return matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)


def _runs_by_seed(results: StudyResults, remedy: Remedy, attack: str, source: str,
                  eps: float) -> list[Evaluation | None]:
    """The natural model's evaluation under `remedy`, `attack`, `source` and `eps` of each seed (None where
    that seed has none)."""
    return [next((e for e in results.evaluations if e.sampling == "natural" and e.remedy == remedy
                  and e.attack == attack and e.source == source and e.eps == eps and e.seed == seed), None)
            for seed in results.seeds]


def created_confusions(results: StudyResults, remedy: Remedy, attack: str, source: str, eps: float,
                       top: int = 15) -> list[Confusion]:
    """The `top` confusions (true != predicted) the attack adds most to, by mean share over seeds (those it
    adds to at all)."""
    runs = _runs_by_seed(results, remedy, attack, source, eps)
    pairs = [(_shares(e, "clean"), _shares(e, "adversarial")) for e in runs]
    pairs = [(c, a) for c, a in pairs if c is not None and a is not None]
    if not pairs:
        return []
    mean_created = np.mean([a - c for c, a in pairs], axis=0)
    np.fill_diagonal(mean_created, -np.inf)
    order = np.argsort(mean_created, axis=None)[::-1][:top]
    out = []
    for flat in order:
        i, j = np.unravel_index(flat, mean_created.shape)
        if not mean_created[i, j] > 0:
            break
        out.append(Confusion(int(i), int(j), Estimate(tuple(c[i, j] for c, _ in pairs), SHARE),
                             Estimate(tuple(a[i, j] for _, a in pairs), SHARE),
                             Estimate(tuple(a[i, j] - c[i, j] for c, a in pairs))))
    return out


@dataclass(frozen=True)
class FamilyShare:
    """Of a family's misclassified images, the share predicted as another member of the family, clean and
    after the attack, with the share a uniform error would give ((members - 1) / (classes - 1))."""

    family: list[int]
    clean: Estimate
    attacked: Estimate
    uniform: float


def family_shares(results: StudyResults, remedy: Remedy, attack: str, source: str, eps: float) -> list[FamilyShare]:
    """For each look-alike family: where the family's errors go, clean and after the attack."""
    runs = [e for e in _runs_by_seed(results, remedy, attack, source, eps)
            if e is not None and {"clean", "adversarial"} <= set(e.confusion)]
    k = len(results.class_names)
    out = []
    for family in look_alike_families(results.class_names):
        shares = {}
        for kind in ("clean", "adversarial"):
            values = []
            for e in runs:
                rows = e.confusion[kind][family].astype(float)
                errors = rows.sum() - rows[:, family].trace()  # rows[m, family[m]] is member m's correct count
                inside = rows[:, family].sum() - rows[:, family].trace()
                values.append(inside / errors if errors else NAN)
            shares[kind] = Estimate(tuple(values), SHARE)
        out.append(FamilyShare(family, shares["clean"], shares["adversarial"], (len(family) - 1) / (k - 1)))
    return out
