"""Which remedy for imbalance gives the rare classes their accuracy back, and is any gain real?

For each imbalanced profile that a sweep trained under more than one remedy (`--losses`, `--resample`),
or attacked adjusted post hoc (`--posthoc`), per remedy, attack and box: the rare classes' clean
accuracy and accuracy after the attack, the mean and worst of the attacked per-class accuracies, the
rare classes' difference from plain cross-entropy, clean and attacked, paired by seed, and what the
remedy costs the other classes: their mean clean accuracy and its difference from plain
cross-entropy's. The rare classes are the profile's cut ones: class c of `under`, every class but c
of `over`, the last half by class id of `longtail` and `step` (the tail), and of `natural` the half
with the fewest training images.

A "fake gain" (Wu et al., CVPR 2021: a remedy's PGD gain that AutoAttack takes back) is flagged where
a remedy's white-box gain over cross-entropy under PGD exceeds its gain under AutoAttack by more than
`FAKE_GAIN` (2 points).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imbadv.config import model_label
from imbadv.report.analysis import SHARE, Estimate
from imbadv.tracking import names
from imbadv.tracking.results import Evaluation, StudyResults

PLAIN = ("ce", "none", 0.0)  # (loss, resample, post-hoc tau) of the paper's models
FAKE_GAIN = 0.02  # PGD gain minus AutoAttack gain above which a remedy's gain is flagged
BOXES = {"self": "white-box", "balanced": "black-box", "peer": "black-box (peer)"}
Profile = tuple[str, "int | None", "float | None"]  # (sampling, class_id, ratio)


def rare_classes(sampling: str, class_id: int | None, num_classes: int,
                 counts: Sequence[float] | None = None) -> list[int]:
    """The classes a profile cuts: class c (under), all but c (over), the last half by id (longtail, step);
    of a natural profile, the half with the fewest training images (`counts`, by class id)."""
    if sampling == "under":
        return [class_id]
    if sampling == "over":
        return [k for k in range(num_classes) if k != class_id]
    if sampling == "natural":
        if counts is None or len(counts) != num_classes:
            return []
        return sorted(sorted(range(num_classes), key=lambda k: (counts[k], k))[:num_classes // 2])
    return list(range(num_classes - num_classes // 2, num_classes))


@dataclass(frozen=True)
class RemedyRow:
    """One profile under one remedy and one attack, across seeds: a row of remedies.csv."""

    eps: float
    profile: Profile
    remedy: tuple[str, str, float]  # (loss, resample, post-hoc tau)
    attack: str
    box: str
    seeds: tuple[int, ...]
    rare_clean: Estimate
    rare_adv: Estimate
    mean_adv: Estimate  # mean of the attacked classes' accuracies (balanced accuracy where all were attacked)
    worst_adv: Estimate  # the lowest attacked class's accuracy
    gain: Estimate  # rare_adv minus plain cross-entropy's, paired by seed (NaN for plain itself)
    clean_gain: Estimate  # rare_clean minus plain cross-entropy's, paired by seed (NaN for plain itself)
    others_clean: Estimate  # the other classes' mean clean accuracy, whichever evaluation of the model read them
    others_change: Estimate  # others_clean minus plain cross-entropy's, paired by seed (NaN for plain itself)
    fake_gain: bool | None = None  # white-box PGD rows where AutoAttack ran too

    @property
    def label(self) -> str:
        sampling, class_id, ratio = self.profile
        return model_label(sampling, class_id, ratio)

    @property
    def remedy_label(self) -> str:
        loss, resample, tau = self.remedy
        return loss + ("" if resample == "none" else f"+{resample}") + (f"+posthoc{tau:g}" if tau else "")


def _rare_mean(e: Evaluation | None, metric: str, rare: list[int]) -> float:
    if e is None:
        return math.nan
    values = [e.per_class(metric, k) for k in rare]
    return float(sum(values) / len(values)) if all(math.isfinite(v) for v in values) else math.nan


def _attacked(e: Evaluation | None, num_classes: int) -> list[float]:
    """The per-class accuracies after the attack of the classes it attacked."""
    if e is None:
        return []
    return [v for k in range(num_classes) if math.isfinite(v := e.per_class(names.ADV_ACC, k))]


def _others_clean(clean: list[float] | None, rare: list[int]) -> float:
    others = [v for j, v in enumerate(clean or ()) if j not in rare]
    return float(sum(others) / len(others)) if others else math.nan


def remedy_rows(results: StudyResults, natural_counts: Sequence[float] | None = None) -> list[RemedyRow]:
    """Every profile that ran under a remedy beside plain cross-entropy, per remedy, attack, box and eps;
    `natural_counts`: the natural profile's training images per class, which say its rare classes."""
    found: dict[tuple, Evaluation] = {}
    for e in results.evaluations:
        if e.sampling != "balanced":
            found[(e.eps, e.attack, e.source, (e.sampling, e.class_id, e.ratio), e.remedy, e.seed)] = e
    clean = results.clean_by_model()
    remedies_of: dict[Profile, set[tuple[str, str, float]]] = {}
    for key in found:
        remedies_of.setdefault(key[3], set()).add(key[4])
    num_classes = len(results.class_names)
    rows = []
    for profile in sorted((p for p, r in remedies_of.items() if PLAIN in r and len(r) > 1),
                          key=lambda p: (p[0], -1 if p[1] is None else p[1], p[2] or 0.0)):
        rare = rare_classes(profile[0], profile[1], num_classes, natural_counts)
        if not rare:
            continue
        remedies = sorted(remedies_of[profile], key=lambda r: (r != PLAIN, r))
        others = {remedy: [_others_clean(clean.get((s, *profile, remedy)), rare) for s in results.seeds]
                  for remedy in remedies}
        for eps in results.eps_values:
            for attack in results.attacks:
                for source, box in BOXES.items():
                    plain_runs = [found.get((eps, attack, source, profile, PLAIN, s)) for s in results.seeds]
                    plain = [_rare_mean(e, names.ADV_ACC, rare) for e in plain_runs]
                    plain_clean = [_rare_mean(e, names.CLEAN_ACC, rare) for e in plain_runs]
                    for remedy in remedies:
                        runs = [found.get((eps, attack, source, profile, remedy, s)) for s in results.seeds]
                        if not any(runs):
                            continue
                        adv = [_rare_mean(e, names.ADV_ACC, rare) for e in runs]
                        rare_clean = [_rare_mean(e, names.CLEAN_ACC, rare) for e in runs]
                        attacked = [_attacked(e, num_classes) for e in runs]
                        rows.append(RemedyRow(
                            eps, profile, remedy, attack, box,
                            tuple(s for s, e in zip(results.seeds, runs, strict=True) if e),
                            Estimate(tuple(rare_clean), SHARE),
                            Estimate(tuple(adv), SHARE),
                            Estimate(tuple(sum(a) / len(a) if a else math.nan for a in attacked), SHARE),
                            Estimate(tuple(min(a) if a else math.nan for a in attacked), SHARE),
                            Estimate(tuple(math.nan if remedy == PLAIN else x - y
                                           for x, y in zip(adv, plain, strict=True))),
                            Estimate(tuple(math.nan if remedy == PLAIN else x - y
                                           for x, y in zip(rare_clean, plain_clean, strict=True))),
                            Estimate(tuple(v if e else math.nan for v, e in zip(others[remedy], runs, strict=True)),
                                     SHARE),
                            Estimate(tuple(math.nan if remedy == PLAIN or not e else x - y
                                           for x, y, e in zip(others[remedy], others[PLAIN], runs, strict=True)))))
    return _with_fake_gains(rows)


def _with_fake_gains(rows: list[RemedyRow]) -> list[RemedyRow]:
    """Flag the white-box PGD rows whose gain AutoAttack takes back by more than FAKE_GAIN."""
    autoattack = {(r.eps, r.profile, r.remedy): r.gain for r in rows
                  if r.attack == "autoattack" and r.box == "white-box"}
    flagged = []
    for row in rows:
        aa = autoattack.get((row.eps, row.profile, row.remedy))
        if row.attack == "pgd" and row.box == "white-box" and row.remedy != PLAIN and aa is not None:
            pgd_gain, aa_gain = row.gain.mean, aa.mean
            fake = pgd_gain - aa_gain > FAKE_GAIN if math.isfinite(pgd_gain) and math.isfinite(aa_gain) else None
            row = RemedyRow(**{**row.__dict__, "fake_gain": fake})
        flagged.append(row)
    return flagged


def write_remedies_csv(rows: list[RemedyRow], path: Path) -> Path:
    """remedies.csv: one row per profile, remedy, attack, box and eps; shares in [0, 1]."""
    columns = ["eps", "profile", "remedy", "attack", "box", "seeds"]
    for measure in ("rare_clean", "rare_adv", "mean_adv", "worst_adv", "gain", "clean_gain", "others_clean",
                    "others_change"):
        columns += [measure, f"{measure}_ci_low", f"{measure}_ci_high"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*columns, "fake_gain"])
        for r in rows:
            values: list[object] = [r.eps, r.label, r.remedy_label, r.attack, r.box, len(r.seeds)]
            for estimate in (r.rare_clean, r.rare_adv, r.mean_adv, r.worst_adv, r.gain, r.clean_gain,
                             r.others_clean, r.others_change):
                values += [estimate.mean, *estimate.interval]
            writer.writerow([*values, "" if r.fake_gain is None else r.fake_gain])
    return path


def remedies_figure(rows: list[RemedyRow], eps: float, path: Path) -> Path:
    """Per profile, the rare classes' clean and white-box accuracy under each attack, remedy by remedy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.eps == eps and r.box == "white-box"]
    profiles = list(dict.fromkeys(r.profile for r in shown))
    fig, axes = plt.subplots(len(profiles), 1, figsize=(8, 3.2 * max(len(profiles), 1)), squeeze=False,
                             constrained_layout=True)
    for ax, profile in zip(axes[:, 0], profiles, strict=True):
        own = [r for r in shown if r.profile == profile]
        remedies = list(dict.fromkeys(r.remedy_label for r in own))
        attacks = list(dict.fromkeys(r.attack for r in own))
        series = [("clean", {r.remedy_label: r.rare_clean for r in own})]
        series += [(a, {r.remedy_label: r.rare_adv for r in own if r.attack == a}) for a in attacks]
        width = 0.8 / len(series)
        for i, (name, by_remedy) in enumerate(series):
            estimates = [by_remedy.get(m, Estimate(())) for m in remedies]
            means = [100 * e.mean for e in estimates]
            errors = [[100 * (e.mean - e.interval[0]) if math.isfinite(e.interval[0]) else 0 for e in estimates],
                      [100 * (e.interval[1] - e.mean) if math.isfinite(e.interval[1]) else 0 for e in estimates]]
            ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(remedies))], means, width,
                   yerr=errors, capsize=2, label=name)
        ax.set_xticks(range(len(remedies)), remedies)
        ax.set_ylim(0, 100)
        ax.set_ylabel("% of the rare classes")
        ax.set_title(f"{own[0].label}: rare classes, white-box, eps={eps:g}")
        ax.legend(fontsize="small", ncols=len(series))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _change(row: RemedyRow, change: Estimate) -> str:
    return "" if row.remedy == PLAIN or not math.isfinite(change.mean) else f" ({change.text()})"


def remedies_table(rows: list[RemedyRow], eps: float) -> tuple[list[str], list[list[str]]]:
    """The report's table: rare classes' accuracy and gain over plain cross-entropy, white- and black-box,
    and the other classes' clean accuracy with its change from plain cross-entropy."""
    header = ["profile", "remedy", "attack", "box", "rare clean (change vs ce)", "rare attacked",
              "gain vs ce (points)", "mean / worst class", "others clean (change vs ce)", "fake gain"]
    body = []
    for r in (r for r in rows if r.eps == eps):
        gain = "-" if r.remedy == PLAIN else r.gain.text()
        body.append([r.label, r.remedy_label, r.attack, r.box, r.rare_clean.text() + _change(r, r.clean_gain),
                     r.rare_adv.text(), gain, f"{r.mean_adv.text()} / {r.worst_adv.text()}",
                     r.others_clean.text() + _change(r, r.others_change),
                     "" if r.fake_gain is None else ("yes" if r.fake_gain else "no")])
    return header, body
