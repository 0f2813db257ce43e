"""The report under several attacks: a Table 1 per attack, the FGSM-vs-strongest audit, results files."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from imbadv.report.audit import FLAG_POINTS, audit_rows
from imbadv.report.output import write_report
from imbadv.report.saved import read_results_files, write_results_file
from imbadv.tracking.results import Evaluation, StudyResults
from test_report import CAT, PAPER_LIKE, Verdicts, study


def _with_attack(results: StudyResults, attack: str, scale: float, whitebox_only: bool = False) -> list[Evaluation]:
    """`results`' evaluations relabelled as `attack`, every adversarial accuracy times `scale`."""
    out = []
    for e in results.evaluations:
        if whitebox_only and e.source != "self":
            continue
        metrics = {k: (v * scale if k.startswith("adv_acc") else v) for k, v in e.metrics.items()}
        metrics |= {f"success_rate_c{k}": 1.0 - metrics[f"adv_acc_c{k}"] / metrics[f"clean_acc_c{k}"]
                    for k in range(10)}
        out.append(dataclasses.replace(e, run_id=f"{e.run_id}-{attack}", metrics=metrics, attack=attack,
                                       attack_params="steps=20" if attack == "pgd" else "version=fast"))
    return out


@pytest.fixture
def three_attacks() -> StudyResults:
    fgsm = study([PAPER_LIKE, PAPER_LIKE, PAPER_LIKE])
    evaluations = fgsm.evaluations + _with_attack(fgsm, "pgd", 0.5) + _with_attack(fgsm, "autoattack", 0.1, True)
    return dataclasses.replace(fgsm, evaluations=evaluations)


def test_each_attack_is_its_own_table1(three_attacks):
    assert three_attacks.attacks == ["fgsm", "pgd", "autoattack"]
    pgd = three_attacks.of_attack("pgd")
    assert {e.attack for e in pgd.evaluations} == {"pgd"}
    under_cat = pgd.find(0, 0.01, "under", CAT, "self")
    assert under_cat.per_class("adv_acc", CAT) == pytest.approx(PAPER_LIKE["whitebox_undersample"] * 0.5)


def test_the_audit_flags_cells_where_fgsm_overstates_robustness(three_attacks):
    rows = audit_rows(three_attacks)
    assert len(rows) == 10 * 5  # every class and column has FGSM and at least PGD
    by_cell = {(r["class_id"], r["column"]): r for r in rows}
    white = by_cell[CAT, "whitebox_oversample"]
    assert white["strongest"] == "autoattack"  # lowest accuracy wins, where it ran (white-box only)
    assert white["acc_gap"] == pytest.approx(PAPER_LIKE["whitebox_oversample"] * 0.9)
    assert white["acc_flag"] and white["success_flag"]
    black = by_cell[CAT, "blackbox_undersample"]
    assert black["strongest"] == "pgd" and black["acc_autoattack"] != black["acc_autoattack"]  # NaN: not run
    assert black["acc_gap"] == pytest.approx(PAPER_LIKE["blackbox_undersample"] * 0.5)


def test_a_gap_within_five_points_is_not_flagged(three_attacks):
    fgsm = three_attacks.of_attack("fgsm")
    near = dataclasses.replace(fgsm, evaluations=fgsm.evaluations + _with_attack(fgsm, "pgd", 0.999))
    assert not any(r["acc_flag"] for r in audit_rows(near))
    assert FLAG_POINTS == 0.05
    assert audit_rows(fgsm) == []  # one attack: nothing to audit


def test_the_report_writes_a_folder_per_attack_and_the_audit(three_attacks, tmp_path):
    write_report(three_attacks, tmp_path)
    for attack in ("pgd", "autoattack"):
        assert (tmp_path / "attacks" / attack / "table1.csv").exists()
        assert (tmp_path / "attacks" / attack / "report.html").exists()
    top = (tmp_path / "report.md").read_text()
    assert "FGSM ascent" in top and "attacks/pgd/report.md" in top and "attack_audit.csv" in top
    pgd = (tmp_path / "attacks" / "pgd" / "report.md").read_text()
    assert "PGD ascent (steps=20)" in pgd
    with open(tmp_path / "attack_audit.csv") as handle:
        audit = list(csv.DictReader(handle))
    assert len(audit) == 50 and {"acc_fgsm", "acc_pgd", "acc_autoattack", "acc_gap", "success_gap"} <= set(audit[0])


def test_over_sampling_is_judged_under_autoattack(three_attacks, tmp_path):
    """The claim 'over-sampled models are more robust' is checked on AutoAttack's own Table 1."""
    from imbadv.report.analysis import claims
    verdicts = Verdicts({c.claim: c.holds for c in claims(three_attacks.of_attack("autoattack"))})
    assert verdicts["Over-sampled models are more robust"] is True  # 0.044 over 0.026 in each seed
    assert verdicts["Black-box attacks are weaker than white-box attacks (under"] is None  # no black-box cells


def test_results_files_keep_the_attack(three_attacks, tmp_path):
    path = write_results_file(three_attacks, tmp_path / "results.json")
    read, _ = read_results_files([path])
    assert sorted((e.key, e.attack_params) for e in read.evaluations) == \
        sorted((e.key, e.attack_params) for e in three_attacks.evaluations)


def test_a_report_of_a_subset_keeps_its_size_through_results_files(three_attacks, tmp_path):
    """Evaluations of the first N images of each class are a study of their own, reported apart."""
    from imbadv.report.output import _write
    from imbadv.report.saved import ResultsFileError

    subset = dataclasses.replace(three_attacks, images_per_class=200)
    folder = _write(subset, str(tmp_path), "logits")
    assert folder.name == "cifar10-paper-200-per-class"
    read, _ = read_results_files([folder / "results.json"])
    assert read.images_per_class == 200
    whole = write_results_file(three_attacks, tmp_path / "whole.json")
    with pytest.raises(ResultsFileError, match=r"holds images_per_class 200 but .* holds 0"):
        read_results_files([whole, folder / "results.json"])
