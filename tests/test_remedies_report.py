"""The remedies part of the sweep's report on hand-made evaluations of three seeds with known numbers."""

from __future__ import annotations

import csv
import math

import pytest

from imbadv.report.remedies import FAKE_GAIN, remedy_rows, rare_classes
from imbadv.report.sweep_output import write_sweep_report
from imbadv.tracking.results import Evaluation, StudyResults

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CAT = 3
SEEDS = (0, 1, 2)
# Cat's white-box accuracy on its under-sampled model (ratio 5) by remedy and attack; seed s adds
# 0.01 * (s - 1). cb gains 10 points under PGD and 2 under AutoAttack: a fake gain (8 > 2 points);
# la gains 5 under both: a real one.
CAT_ADV = {("ce", "pgd"): 0.10, ("ce", "autoattack"): 0.05, ("cb", "pgd"): 0.20, ("cb", "autoattack"): 0.07,
           ("la", "pgd"): 0.15, ("la", "autoattack"): 0.10, ("bs", "pgd"): 0.10, ("ce", "fgsm"): 0.2,
           ("cb", "fgsm"): 0.3, ("la", "fgsm"): 0.25}
CLEAN = {"ce": 0.40, "cb": 0.55, "la": 0.50, "bs": 0.45}
# The other classes' clean accuracy on the under-sampled model: cb pays 6 points for cat's 15.
OTHERS_CLEAN = {"ce": 0.80, "cb": 0.74, "la": 0.78, "bs": 0.80}


def _evaluation(seed: int, sampling: str, class_id: int | None, loss: str, attack: str, source: str = "self",
                ratio: float | None = 5.0) -> Evaluation:
    shift = 0.01 * (seed - 1)
    metrics = {}
    for k in range(len(NAMES)):
        special = k == CAT and sampling == "under"
        if k == CAT or sampling != "under" or attack == "fgsm":  # a class model's strong attacks read its class only
            metrics[f"clean_acc_c{k}"] = CLEAN[loss] + shift if special else OTHERS_CLEAN[loss]
            metrics[f"adv_acc_c{k}"] = (CAT_ADV[(loss, attack)] + shift) if special else 0.3 + 0.01 * k
    return Evaluation(f"{seed}-{sampling}-{loss}-{attack}-{source}", seed, 0.01, sampling, class_id, source, metrics,
                      attack=attack, ratio=ratio, loss=loss)


@pytest.fixture
def results() -> StudyResults:
    evaluations = [_evaluation(s, "under", CAT, loss, attack) for s in SEEDS for loss in ("ce", "cb", "la")
                   for attack in ("fgsm", "pgd", "autoattack")]
    evaluations += [_evaluation(s, "longtail", None, loss, "pgd", ratio=100.0) for s in SEEDS for loss in ("ce", "bs")]
    return StudyResults("cifar10", "cpu", NAMES, evaluations, None)


def test_rare_classes_are_the_ones_a_profile_cuts():
    assert rare_classes("under", 3, 10) == [3]
    assert rare_classes("over", 3, 10) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert rare_classes("longtail", None, 10) == [5, 6, 7, 8, 9] == rare_classes("step", None, 10)
    assert rare_classes("longtail", None, 43)[0] == 22


def test_gains_over_cross_entropy_are_paired_by_seed_and_fake_gains_are_flagged(results):
    rows = {(r.profile, r.remedy_label, r.attack): r for r in remedy_rows(results)}
    cb_pgd, la_pgd = rows[(("under", CAT, 5.0), "cb", "pgd")], rows[(("under", CAT, 5.0), "la", "pgd")]
    assert cb_pgd.gain.mean == pytest.approx(0.10) and cb_pgd.gain.interval[0] == pytest.approx(0.10)  # paired
    assert rows[(("under", CAT, 5.0), "cb", "autoattack")].gain.mean == pytest.approx(0.02)
    assert cb_pgd.fake_gain is True and FAKE_GAIN < 0.10 - 0.02
    assert la_pgd.fake_gain is False
    assert rows[(("under", CAT, 5.0), "ce", "pgd")].fake_gain is None  # plain cross-entropy gains nothing
    assert rows[(("under", CAT, 5.0), "cb", "autoattack")].fake_gain is None
    assert math.isnan(rows[(("under", CAT, 5.0), "ce", "pgd")].gain.mean)
    assert rows[(("under", CAT, 5.0), "la", "pgd")].rare_clean.mean == pytest.approx(0.50)
    assert rows[(("under", CAT, 5.0), "la", "pgd")].clean_gain.values == pytest.approx((0.10,) * 3)  # paired
    assert math.isnan(rows[(("under", CAT, 5.0), "ce", "pgd")].clean_gain.mean)
    assert rows[(("under", CAT, 5.0), "cb", "pgd")].seeds == SEEDS


def test_what_a_remedy_costs_the_other_classes_is_read_from_the_evaluation_that_saw_them(results):
    rows = {(r.remedy_label, r.attack): r for r in remedy_rows(results) if r.profile == ("under", CAT, 5.0)}
    cb_pgd = rows[("cb", "pgd")]
    assert cb_pgd.mean_adv.mean == pytest.approx(cb_pgd.rare_adv.mean)  # PGD read cat alone
    assert cb_pgd.others_clean.mean == pytest.approx(0.74)  # from cb's FGSM evaluation, which read every class
    assert cb_pgd.others_change.mean == pytest.approx(-0.06) and cb_pgd.others_change.interval[1] < 0
    assert rows[("la", "autoattack")].others_change.mean == pytest.approx(-0.02)
    assert rows[("ce", "pgd")].others_clean.mean == pytest.approx(0.80)
    assert math.isnan(rows[("ce", "pgd")].others_change.mean)
    without_fgsm = StudyResults("cifar10", "cpu", NAMES, [e for e in results.evaluations if e.attack != "fgsm"], None)
    row = next(r for r in remedy_rows(without_fgsm) if r.profile[0] == "under" and r.remedy_label == "cb")
    assert math.isnan(row.others_clean.mean)  # no evaluation read the other classes: unknown, not zero


def test_the_tail_and_the_worst_class_of_a_long_tailed_model(results):
    row = next(r for r in remedy_rows(results) if r.profile[0] == "longtail" and r.remedy_label == "bs")
    assert row.rare_adv.mean == pytest.approx(sum(0.3 + 0.01 * k for k in range(5, 10)) / 5)
    assert row.worst_adv.mean == pytest.approx(0.30) and row.mean_adv.mean == pytest.approx(0.345)
    assert row.gain.mean == pytest.approx(0.0)


def test_a_profile_trained_without_plain_cross_entropy_beside_it_has_no_rows(results):
    lonely = StudyResults("cifar10", "cpu", NAMES, [e for e in results.evaluations if e.loss != "ce"], None)
    assert remedy_rows(lonely) == []


def test_the_sweep_report_writes_remedies_csv_its_figure_and_section(results, tmp_path):
    plain = results.plain_models()
    files = write_sweep_report(plain, tmp_path, {}, remedy_rows(results))
    assert {"remedies.csv", "remedies.png"} <= set(files)
    rows = list(csv.DictReader(files["remedies.csv"].read_text().splitlines()))
    cb = next(r for r in rows if r["profile"] == "under-c3" and r["remedy"] == "cb" and r["attack"] == "pgd")
    assert float(cb["gain"]) == pytest.approx(0.10) and cb["fake_gain"] == "True" and cb["seeds"] == "3"
    assert float(cb["others_change"]) == pytest.approx(-0.06) and float(cb["others_clean"]) == pytest.approx(0.74)
    report = files["report.md"].read_text()
    assert "## Remedies" in report and "fake gain" in report.lower()
    assert "| 74.0 [74.0, 74.0] (-6.0 [-6.0, -6.0]) |" in report
    assert "| 55.0 [52.5, 57.5] (15.0 [15.0, 15.0]) |" in report  # cb's rare clean and its change
    assert float(cb["clean_gain"]) == pytest.approx(0.15)


def test_a_posthoc_adjustment_is_a_remedy_of_its_own(results):
    adjusted = [Evaluation(f"{s}-posthoc", s, 0.01, "under", CAT, "self",
                           {f"clean_acc_c{CAT}": 0.6, f"adv_acc_c{CAT}": 0.12 + 0.01 * (s - 1)}, attack="pgd",
                           ratio=5.0, posthoc_tau=1.0) for s in SEEDS]
    everything = StudyResults("cifar10", "cpu", NAMES, results.evaluations + adjusted, None)
    row = next(r for r in remedy_rows(everything) if r.remedy_label == "ce+posthoc1")
    assert row.remedy == ("ce", "none", 1.0) and row.gain.mean == pytest.approx(0.02)
    assert all(e.is_plain != bool(e.posthoc_tau) for e in adjusted)
    assert not everything.plain_models().evaluations or all(not e.posthoc_tau
                                                            for e in everything.plain_models().evaluations)
    assert len({e.identity for e in everything.evaluations}) == len(everything.evaluations)
