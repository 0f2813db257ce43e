"""The natural-imbalance report (`imbadv report --natural`) on hand-made evaluations of three seeds with
known numbers, and once end to end on a smoke `imbadv natural` study."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imbadv.report.natural import (created_confusions, family_shares, look_alike_families, natural_models)
from imbadv.report.natural_output import write_natural_report
from imbadv.report.remedies import rare_classes, remedy_rows
from imbadv.tracking.results import Evaluation, StudyResults

NAMES = ("speed-limit-20", "speed-limit-30", "speed-limit-50", "stop", "yield", "keep-left")
COUNTS = (210, 2220, 2250, 780, 2160, 300)
SEEDS = (0, 1, 2)
PLAIN = ("ce", "none", 0.0)
TEST_IMAGES = 100  # per class
# White-box FGSM accuracy rises with the training count; cb lifts the three rarest classes by 10 points.
ADV = {k: 0.05 + 0.3 * n / max(COUNTS) for k, n in enumerate(COUNTS)}
CLEAN = 0.9
# The attack sends 40 of speed-limit-20's 100 images to speed-limit-30 (5 there before) and 20 of stop's to yield.
MOVED = {(0, 1): (5, 40), (3, 4): (0, 20)}


def _confusion(kind: str) -> np.ndarray:
    matrix = np.diag([TEST_IMAGES] * len(NAMES))
    for (i, j), (clean, attacked) in MOVED.items():
        moved = clean if kind == "clean" else attacked
        matrix[i, i] -= moved
        matrix[i, j] += moved
    return matrix


def _evaluation(seed: int, loss: str, source: str) -> Evaluation:
    metrics = {}
    for k in range(len(NAMES)):
        lift = 0.10 if loss == "cb" and k in (0, 5, 3) else 0.0
        adv = ADV[k] + lift + 0.01 * (seed - 1) + (0.2 if source == "peer" else 0.0)
        metrics |= {f"clean_acc_c{k}": CLEAN, f"adv_acc_c{k}": adv, f"success_rate_c{k}": 1 - adv / CLEAN}
    version = f"imbadv-gtsrb32-natural{'' if loss == 'ce' else '-' + loss}/{seed + 1}"
    confusion = {kind: _confusion(kind) for kind in ("clean", "adversarial")}
    return Evaluation(f"{seed}-{loss}-{source}", seed, 0.01, "natural", None, source, metrics, confusion,
                      target_version=version, source_version="self" if source == "self" else version, loss=loss)


@pytest.fixture
def results() -> StudyResults:
    return StudyResults("gtsrb32", "cpu", NAMES, [_evaluation(s, loss, source) for s in SEEDS for loss in ("ce", "cb")
                                                  for source in ("self", "peer")], None)


@pytest.fixture
def counts(results) -> dict[str, tuple[int, ...]]:
    return {e.target_version: COUNTS for e in results.evaluations}


def test_accuracy_follows_the_training_count_and_the_worst_class_is_the_rarest(results, counts):
    models = {m.label: m for m in natural_models(results, counts)}
    assert set(models) == {"ce", "cb"}
    plain = models["ce"]
    assert plain.counts == [float(n) for n in COUNTS]
    white = plain.accuracy["white-box fgsm"]
    assert [e.mean for e in white] == pytest.approx([ADV[k] for k in range(len(NAMES))])
    assert plain.correlation("white-box fgsm").rho == pytest.approx(1.0)
    assert plain.worst("white-box fgsm") == 0 and plain.by_count()[:2] == [0, 5]
    assert plain.worst_class["white-box fgsm"].mean == pytest.approx(ADV[0])
    assert plain.mean_class["white-box fgsm"].mean == pytest.approx(np.mean(list(ADV.values())))
    assert plain.accuracy["black-box fgsm"][0].mean == pytest.approx(ADV[0] + 0.2)
    assert plain.success["white-box fgsm"][0].mean == pytest.approx(1 - ADV[0] / CLEAN)


def test_look_alike_families_are_names_equal_up_to_their_numbers():
    assert look_alike_families(NAMES) == [[0, 1, 2]]
    assert look_alike_families(("a-1", "b-1", "end-speed-limit-80", "speed-limit-80")) == []
    assert look_alike_families(("cat", "dog")) == []


def test_the_confusions_an_attack_creates_and_where_a_familys_errors_go(results):
    top = created_confusions(results, PLAIN, "fgsm", "self", 0.01, top=2)
    assert [(c.true, c.predicted) for c in top] == [(0, 1), (3, 4)]
    assert top[0].clean.mean == pytest.approx(0.05) and top[0].attacked.mean == pytest.approx(0.40)
    assert top[0].created.mean == pytest.approx(0.35) and top[1].created.mean == pytest.approx(0.20)
    (speed,) = family_shares(results, PLAIN, "fgsm", "self", 0.01)
    assert speed.family == [0, 1, 2]
    assert speed.clean.mean == pytest.approx(1.0) and speed.attacked.mean == pytest.approx(1.0)
    assert speed.uniform == pytest.approx(2 / 5)


def test_the_rare_classes_of_a_natural_profile_are_the_half_with_the_fewest_images(results, counts):
    assert rare_classes("natural", None, 6, COUNTS) == [0, 3, 5]
    cb = next(r for r in remedy_rows(results, COUNTS) if r.remedy_label == "cb" and r.box == "white-box")
    assert cb.gain.mean == pytest.approx(0.10)
    assert next(r for r in remedy_rows(results, COUNTS) if r.box == "black-box (peer)").profile[0] == "natural"
    assert remedy_rows(results) == []  # no counts: no rare classes to read


def test_the_report_writes_per_class_rows_correlations_confusions_and_its_pages(results, counts, tmp_path):
    files = write_natural_report(results, tmp_path, counts)
    assert {"per_class.csv", "correlation.csv", "confusions.csv", "families.csv", "remedies.csv", "natural-ce.png",
            "natural-cb.png", "report.md", "report.html"} <= set(files)
    rows = list(csv.DictReader(files["per_class.csv"].read_text().splitlines()))
    assert len(rows) == 2 * len(NAMES)
    stop = next(r for r in rows if r["remedy"] == "ce" and r["class_name"] == "stop")
    assert float(stop["train_count"]) == 780 and float(stop["whitebox_fgsm_acc"]) == pytest.approx(ADV[3])
    assert float(stop["blackbox_fgsm_success_among_correct"]) == pytest.approx(1 - (ADV[3] + 0.2) / CLEAN)
    correlation = list(csv.DictReader(files["correlation.csv"].read_text().splitlines()))
    white = next(r for r in correlation if r["remedy"] == "ce" and r["measure"] == "white-box fgsm")
    assert float(white["spearman_rho"]) == pytest.approx(1.0) and white["worst_class"] == "speed-limit-20"
    report = files["report.md"].read_text()
    for heading in ("Does vulnerability follow a class's frequency?", "rarest", "Confusions the attack creates",
                    "## Remedies"):
        assert heading in report
    assert "speed-limit-20 | speed-limit-30" in report.replace("|  ", "| ")


def _imbadv(*args: str, store: str, cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": store}
    return subprocess.run([sys.executable, "-m", "imbadv", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_a_smoke_natural_study_of_traffic_signs_and_its_report(store, gtsrb_small, session_cache, tmp_path):
    options = ("--preset", "smoke", "--data", str(gtsrb_small), "--seeds", "2", "--losses", "ce,cb", "--attacks",
               "fgsm", "--jobs", "1", "--device", "cpu", "--cache-dir", str(session_cache))
    study = _imbadv("natural", *options, store=store, cwd=tmp_path)
    assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
    result = _imbadv("report", "--natural", "--preset", "smoke", "--data", str(gtsrb_small), store=store,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "reports" / "gtsrb32-small-smoke-natural"
    assert {"per_class.csv", "correlation.csv", "confusions.csv", "families.csv", "remedies.csv", "report.html",
            "results.json"} <= {p.name for p in folder.iterdir()}
    rows = list(csv.DictReader((folder / "per_class.csv").read_text().splitlines()))
    assert {r["remedy"] for r in rows} == {"ce", "cb"} and "blackbox_fgsm_acc" in rows[0]
    counts = {r["class_name"]: float(r["train_count"]) for r in rows if r["remedy"] == "ce"}
    assert set(counts) == {"speed-limit-20", "speed-limit-50", "stop", "curve-left"}
    assert counts["speed-limit-50"] > counts["speed-limit-20"]  # the natural counts, after validation
    families = list(csv.DictReader((folder / "families.csv").read_text().splitlines()))
    assert {f["family"] for f in families} == {"speed-limit-20 speed-limit-50"}
    again = _imbadv("natural", *options, store=store, cwd=tmp_path)
    assert "0 steps ran" in again.stdout


def test_a_peer_source_of_another_seeds_version_is_no_mixed_version():
    from imbadv.tracking.results import MixedVersions, check_one_version_per_model

    peer = Evaluation("r", 0, 0.01, "natural", None, "peer", {}, target_version="imbadv-g-natural/1",
                      source_version="imbadv-g-natural/2")
    own = Evaluation("s", 1, 0.01, "natural", None, "self", {}, target_version="imbadv-g-natural/2",
                     source_version="self")
    check_one_version_per_model([peer, own])
    with pytest.raises(MixedVersions):
        check_one_version_per_model([peer, Evaluation("t", 0, 0.01, "natural", None, "self", {},
                                                      target_version="imbadv-g-natural/3", source_version="self")])


def test_the_rarest_and_most_common_classes_split_a_small_dataset_in_halves(results, counts, tmp_path):
    report = write_natural_report(results, tmp_path, counts)["report.md"].read_text()
    table = [line for line in report.splitlines()
             if line.startswith("| ") and (" rare |" in line or " common |" in line)]
    assert [line.split(" | ")[1] for line in table] == ["rare"] * 3 + ["common"] * 3
    assert "keep-left | yield | 0.0" not in report  # confusions the attack does not add to are left out


def test_the_report_command_takes_natural_as_a_flag_and_refuses_two_reports(store):
    import importlib.util

    from typer.testing import CliRunner

    from imbadv.cli import app

    spec = importlib.util.spec_from_file_location("report_entry", Path(__file__).parents[1] / "entrypoints" /
                                                  "report.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    assert entry.flags(["--natural", "true", "--sweep", ""]) == ["--natural"]
    both = CliRunner().invoke(app, ["report", "--natural", "--sweep"])
    assert both.exit_code == 1 and "pass one of them" in both.stderr
    empty = CliRunner().invoke(app, ["report", "--natural", "--preset", "smoke", "--data", "gtsrb32.tar.gz"])
    assert empty.exit_code == 1
    assert "run `imbadv natural --preset smoke --data gtsrb32.tar.gz` first" in empty.stderr.strip().splitlines()[-1]


def test_a_box_the_plain_model_was_not_attacked_from_gets_no_confusion_tables(results, counts, tmp_path):
    white_only = StudyResults("gtsrb32", "cpu", NAMES, [e for e in results.evaluations
                                                        if e.source == "self" or e.loss != "ce"], None)
    files = write_natural_report(white_only, tmp_path, counts)
    families = list(csv.DictReader(files["families.csv"].read_text().splitlines()))
    assert [f["box"] for f in families] == ["white-box"]
    section = files["report.md"].read_text().split("## Confusions the attack creates")[1].split("## Remedies")[0]
    assert section.count("look-alike family") == 1 and "black-box" not in section
