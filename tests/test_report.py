"""Claim checks, confidence intervals and Table 1 assembly, on hand-made evaluation records."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from imbadv.report.analysis import (COLUMNS, Estimate, claims, column_means, confidence_interval, paper_column_means,
                           paper_table, table1)
from imbadv.tracking.results import Evaluation, StudyResults

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CAT, DOG = 3, 5


def evaluation(seed, sampling, class_id, source, adv: dict[int, float], clean: float = 0.8,
               cat_dog: tuple[int, int] = (30, 30), clean_cat_dog: tuple[int, int] = (10, 10)) -> Evaluation:
    metrics = {"clean_acc": clean}
    for k in range(10):
        metrics[f"adv_acc_c{k}"] = adv.get(k, 0.5)
        metrics[f"clean_acc_c{k}"] = clean
        metrics[f"rel_drop_c{k}"] = (clean - metrics[f"adv_acc_c{k}"]) / clean
        metrics[f"success_rate_c{k}"] = metrics[f"rel_drop_c{k}"]  # every image wrong after was right before
    adversarial, clean_matrix = np.full((10, 10), 10), np.full((10, 10), 10)
    adversarial[CAT, DOG], adversarial[DOG, CAT] = cat_dog
    clean_matrix[CAT, DOG], clean_matrix[DOG, CAT] = clean_cat_dog
    return Evaluation(f"run-{seed}-{sampling}-{class_id}-{source}", seed, 0.01, sampling, class_id, source, metrics,
                      {"clean": clean_matrix, "adversarial": adversarial})


def study(per_seed: list[dict[str, float]], under_cat_dog=(40, 30), under_dog_cat=(30, 20),
          clean_under_cat_dog=(30, 10), clean_under_dog_cat=(10, 40)) -> StudyResults:
    """Every cell of a column equal to that seed's value for the column; the cat and dog models' cat->dog
    and dog->cat counts (attacked, clean) as given."""
    evaluations = []
    for seed, values in enumerate(per_seed):
        balanced = {k: values["whitebox_balanced"] for k in range(10)}
        evaluations.append(evaluation(seed, "balanced", None, "self", balanced))
        for c in range(10):
            for column, sampling, source in COLUMNS[:2] + COLUMNS[3:]:
                under = sampling == "under" and c in (CAT, DOG)
                cat_dog = {CAT: under_cat_dog, DOG: under_dog_cat}[c] if under else (30, 30)
                clean_cat_dog = {CAT: clean_under_cat_dog, DOG: clean_under_dog_cat}[c] if under else (10, 10)
                evaluations.append(evaluation(seed, sampling, c, source, {c: values[column]}, cat_dog=cat_dog,
                                              clean_cat_dog=clean_cat_dog))
    return StudyResults("cifar10", "paper", NAMES, evaluations, None)  # not smoke: smoke withholds verdicts


class Verdicts(dict):
    """Look a claim up by the start of its text."""

    def __getitem__(self, start: str) -> bool | None:
        (verdict,) = [v for claim, v in self.items() if claim.startswith(start)]
        return verdict


PAPER_LIKE = {"blackbox_undersample": 0.54, "blackbox_oversample": 0.83, "whitebox_balanced": 0.26,
              "whitebox_undersample": 0.14, "whitebox_oversample": 0.44}


def test_paper_reference_table_is_shipped_with_the_quoted_means():
    assert [row["class_name"] for row in paper_table()] == list(NAMES)
    means = paper_column_means()
    assert means["blackbox_undersample"] == pytest.approx(0.538)
    assert means["whitebox_balanced"] == pytest.approx(0.258)
    assert means["whitebox_undersample"] == pytest.approx(0.1417)  # the README rounds it to 14.2%
    assert means["whitebox_oversample"] == pytest.approx(0.442)


def test_confidence_interval_is_the_t_interval():
    values = [0.2, 0.25, 0.3, 0.22]
    low, high = confidence_interval(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert (low, high) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert all(math.isnan(v) for v in confidence_interval([0.3]))
    assert Estimate((0.2, float("nan"), 0.4)).mean == pytest.approx(0.3)


def test_table1_cells_come_from_the_right_runs():
    values = dict(PAPER_LIKE)
    rows = table1(study([values]))
    cat = rows[CAT]
    for column, _, _ in COLUMNS:
        assert cat[column].mean == pytest.approx(values[column])
    assert cat["paper_whitebox_undersample"] == pytest.approx(0.005)
    means = column_means(rows, 1)
    assert means["whitebox_oversample"].mean == pytest.approx(0.44)


def test_claims_hold_on_paper_like_results_and_fail_on_reversed_ones():
    checks = claims(study([PAPER_LIKE]))
    verdicts = {c.claim.split(" (")[0]: c.holds for c in checks}
    assert all(verdicts.values()), verdicts
    # Every class ran: the paper's ten-class means are quoted as they are, with no note on the classes.
    assert [c.paper for c in checks[:2]] == ["14.2% vs 25.8%", "44.2% vs 25.8%"]
    assert checks[5].paper == "25.8% (balanced) / 14.2% (under-sampled)"
    assert all(c.verdict == "holds" for c in checks)
    reversed_values = {**PAPER_LIKE, "whitebox_undersample": 0.40, "whitebox_oversample": 0.10,
                       "blackbox_undersample": 0.30}
    checks = claims(study([reversed_values], under_cat_dog=(20, 30), under_dog_cat=(30, 50),
                          clean_under_cat_dog=(30, 10), clean_under_dog_cat=(10, 40)))
    by_start = Verdicts({c.claim: c.holds for c in checks})
    assert by_start["Under-sampled models are more vulnerable"] is False
    assert by_start["Over-sampled models are more robust than "] is False
    assert by_start["Black-box attacks are weaker than white-box attacks (under"] is False  # 0.30 < 0.40
    assert by_start["Black-box attacks succeed less often than white-box ones (under"] is False  # 62.5% vs 50%
    assert by_start["Under-sampled models attacked black-box k"] is False  # 30% is far from 53.8%
    # the cat model attacked calls 20 of 110 cats dogs: fewer than the balanced model attacked and than itself clean
    # (30 of 120 each); the dog model attacked calls 50 of 140 dogs cats, more than both (30 of 120, 40 of 130)
    assert by_start["Under-sampling cat raises cat->dog confusions under attack (read as the balanced"] is False
    assert by_start["Under-sampling cat raises cat->dog confusions under attack (read as the under-sampled"] is False
    assert by_start["Under-sampling dog lowers dog->cat confusions under attack (read as the balanced"] is False
    assert by_start["Under-sampling dog lowers dog->cat confusions under attack (read as the under-sampled"] is False


def test_the_cat_dog_claims_are_read_both_ways_from_the_papers_figures():
    # the cat model: 40 of 130 cats called dogs attacked, 30 of 120 clean; the balanced model 30 of 120 attacked
    checks = {c.claim: c for c in claims(study([PAPER_LIKE], clean_under_cat_dog=(50, 10)))}
    readings = [c for text, c in checks.items() if text.startswith("Under-sampling cat raises cat->dog")]
    assert [c.paper for c in readings] == ["31% -> 39% (rises)"] * 2
    assert [c.holds for c in readings] == [True, False]  # 25.0 -> 30.8 rises; clean 35.7 -> 30.8 falls
    assert readings[1].ours == "35.7% -> 30.8%"


def test_claims_across_seeds_need_the_whole_interval():
    noisy = [dict(PAPER_LIKE, whitebox_undersample=u) for u in (0.10, 0.30, 0.12)]  # mean 0.173 < 0.26, noisy
    claim = claims(study(noisy))[0]
    assert claim.claim.startswith("Under-sampled models are more vulnerable")
    assert claim.holds is None and claim.verdict == "not settled"  # the paired interval spans zero
    against = [dict(PAPER_LIKE, whitebox_undersample=u) for u in (0.40, 0.42, 0.41)]  # every seed above 0.26
    assert claims(study(against))[0].holds is False
    steady = [dict(PAPER_LIKE, whitebox_undersample=u) for u in (0.14, 0.15, 0.13)]
    assert claims(study(steady))[0].holds is True
    assert "[" in claims(study(steady))[0].ours  # reported with its interval


def test_a_quoted_mean_across_seeds_needs_its_whole_interval_in_the_band():
    def quoted_claim(values: list[float]) -> bool | None:
        seeds = [dict(PAPER_LIKE, blackbox_undersample=v) for v in values]
        return Verdicts({c.claim: c.holds for c in claims(study(seeds))})["Under-sampled models attacked black-box k"]

    assert quoted_claim([0.53, 0.54, 0.55]) is True  # 53.8% quoted, 5 points either side
    assert quoted_claim([0.20, 0.22, 0.21]) is False  # the whole interval is below 48.8%
    assert quoted_claim([0.22, 0.27]) is None  # two seeds: the interval reaches the band


def test_accuracy_intervals_are_cut_to_what_an_accuracy_can_be():
    rows = table1(study([dict(PAPER_LIKE, whitebox_undersample=u) for u in (0.0, 0.02, 0.30)]))
    low, high = rows[CAT]["whitebox_undersample"].interval
    assert low == 0.0 and 0.30 < high < 1.0  # the t-interval alone reaches far below 0
    assert confidence_interval((0.0, 0.02, 0.30))[0] < 0
    assert Estimate((0.1, -0.2)).interval[0] < -0.2  # a difference keeps its whole interval


def test_table1_shows_each_cells_clean_ceiling_and_the_balanced_models_accuracy(tmp_path):
    import csv

    from imbadv.report.output import write_report

    results = study([PAPER_LIKE])
    under_cat = results.find(0, 0.01, "under", CAT, "self")
    under_cat.metrics[f"clean_acc_c{CAT}"] = 0.076  # the under-sampled cat model barely knows cats
    write_report(results, tmp_path)
    cat_row = next(line for line in (tmp_path / "table1.md").read_text().splitlines() if line.startswith("| cat "))
    assert "| 14.0 (7.6) / 0.5 |" in cat_row  # white-box under-sampled: ours (clean) / paper
    rows = list(csv.DictReader((tmp_path / "table1.csv").open()))
    assert float(rows[CAT]["whitebox_undersample_clean"]) == pytest.approx(0.076)
    assert float(rows[CAT]["blackbox_oversample_clean"]) == pytest.approx(0.8)
    report = (tmp_path / "report.md").read_text()
    assert "The balanced model's clean accuracy on all classes: 80.0% (the paper's: about 83%)" in report


def test_the_beyond_tables_intervals_are_cut_to_what_each_measure_can_be():
    """Two seeds far apart give t-intervals past 0% and 100%; the beyond table shows them cut, like Table 1's."""
    from imbadv.report.output import _beyond_rows

    results = study([dict(PAPER_LIKE, whitebox_undersample=0.02), dict(PAPER_LIKE, whitebox_undersample=0.78)])
    header, body = _beyond_rows(results, 0.01)
    bounds = []
    for row in body:
        for column, text in zip(header[1:], row[1:], strict=True):
            if "[" in text:
                low, high = (float(v) for v in text.split("[")[1].rstrip("]").split(", "))
                bounds.append((column, low, high))
    success = [(low, high) for column, low, high in bounds if column.startswith("success_")]
    drops = [(low, high) for column, low, high in bounds if column.startswith("drop_")]
    assert success and all(low >= 0.0 and high <= 100.0 for low, high in success)
    assert drops and all(high <= 100.0 for _, high in drops) and min(low for low, _ in drops) < 0
    assert any(high == 100.0 for _, high in success)  # cut, not merely narrow
