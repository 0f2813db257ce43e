"""The sweep's report (`imbadv report --sweep`) on hand-made evaluations of three seeds with known numbers,
and once end to end on a smoke sweep."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from imbadv.config import model_label
from imbadv.core.sampling import class_counts
from imbadv.report.analysis import Estimate, confidence_interval
from imbadv.report.saved import read_results_files, write_results_file
from imbadv.report.sweep import Point, curve, longtails, spearman, trends
from imbadv.report.sweep_output import write_sweep_report
from imbadv.tracking.results import Evaluation, StudyResults

REPO = Path(__file__).resolve().parents[1]
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CAT, DOG = 3, 5
SEEDS = (0, 1, 2)
RATIOS = (2.0, 10.0, 100.0)
MAJORITY = 1000
OFFSET = 0.01  # seed s adds (s - 1) * OFFSET to a clean accuracy: means are the base values, sd OFFSET
# White-box on cat (under-sampled): clean and attacked accuracy by ratio, 1 the balanced model. Its success
# among correct rises (0.625 -> 0.99) and its accuracy falls below 1% from ratio 10.
CAT_CLEAN = {1.0: 0.8, 2.0: 0.7, 10.0: 0.5, 100.0: 0.2}
CAT_ADV = {1.0: 0.3, 2.0: 0.2, 10.0: 0.005, 100.0: 0.002}
# Dog: the attack takes half of what the model knows at every ratio; only its clean accuracy falls.
DOG_CLEAN = {1.0: 0.8, 2.0: 0.6, 10.0: 0.4, 100.0: 0.2}


def _metrics(per_class: dict[int, tuple[float, float]]) -> dict[str, float]:
    """Per class (clean, adversarial) accuracy -> the evaluation's metrics, success among correct included."""
    metrics = {}
    for k in range(len(NAMES)):
        clean, adv = per_class.get(k, (0.5, 0.25))
        metrics |= {f"clean_acc_c{k}": clean, f"adv_acc_c{k}": adv}
        if clean > 0:
            metrics[f"success_rate_c{k}"] = 1 - adv / clean  # every image wrong after was right before
    return metrics


def _evaluation(seed: int, sampling: str, class_id: int | None, ratio: float | None, source: str,
                per_class: dict[int, tuple[float, float]], attack: str = "fgsm") -> Evaluation:
    version = f"imbadv-cifar10-{model_label(sampling, class_id, ratio)}/{seed + 1}"
    return Evaluation(f"run-{seed}-{version}-{source}-{attack}", seed, 0.01, sampling, class_id, source,
                      _metrics(per_class), target_version=version, source_version=source, attack=attack, ratio=ratio)


def _class_values(c: int, ratio: float, seed: int, source: str) -> tuple[float, float]:
    """Class c's (clean, adversarial) accuracy on its under-sampled model at `ratio` in `seed`."""
    shift = (seed - 1) * OFFSET
    if c == CAT:
        clean = CAT_CLEAN[ratio] + shift
        adv = CAT_ADV[ratio] + (seed - 1) * 0.001 if source == "self" else clean * 0.8
    else:
        clean = DOG_CLEAN[ratio] + shift
        adv = clean * (0.5 if source == "self" else 0.9)
    return clean, adv


def _cat_success(ratio: float, seed: int) -> float:
    """Cat's white-box success among correct on its under-sampled model at `ratio` in `seed`."""
    clean, adv = _class_values(CAT, ratio, seed, "self")
    return 1 - adv / clean


def _longtail_clean(k: int) -> float:
    """Clean accuracy falls with the class id (fewer images), ship and truck swapped: rho below 1."""
    return 0.9 - 0.05 * {8: 9, 9: 8}.get(k, k)


def _others_clean(ratio: float) -> float:
    """Clean accuracy of each class but c on c's over-sampled model: it falls as c takes the training set."""
    return 0.6 - 0.1 * math.log10(ratio)


def sweep_results() -> tuple[StudyResults, dict[str, list[int]]]:
    """Cat and dog under- and over-sampled at RATIOS, a long-tailed model at 10, three seeds; and the
    training counts of each model version, as the registry's tags hold them."""
    evaluations = []
    for seed in SEEDS:
        balanced = {c: _class_values(c, 1.0, seed, "self") for c in (CAT, DOG)}
        evaluations.append(_evaluation(seed, "balanced", None, None, "self", balanced))
        for c in (CAT, DOG):
            for ratio in RATIOS:
                for source in ("self", "balanced"):
                    evaluations.append(_evaluation(seed, "under", c, ratio, source,
                                                   {c: _class_values(c, ratio, seed, source)}))
                    evaluations.append(_evaluation(seed, "over", c, ratio, source,
                                                   {c: (0.85, 0.4)} | {k: (_others_clean(ratio), 0.1)
                                                                       for k in range(len(NAMES)) if k != c}))
        shift = (seed - 1) * OFFSET
        for source, share in (("self", 0.5), ("balanced", 0.8)):
            values = {k: (_longtail_clean(k) + shift, (_longtail_clean(k) + shift) * share) for k in range(10)}
            evaluations.append(_evaluation(seed, "longtail", None, 10.0, source, values))
    counts = {e.target_version: class_counts(e.sampling, e.class_id, len(NAMES), MAJORITY, e.ratio)
              for e in evaluations}
    return StudyResults("cifar10", "paper", NAMES, evaluations, None), counts


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, StudyResults]:
    results, counts = sweep_results()
    folder = tmp_path_factory.mktemp("sweep") / "cifar10-paper-sweep"
    write_sweep_report(results, folder, counts)
    return folder, results


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _row(rows: list[dict[str, str]], **match: object) -> dict[str, str]:
    (row,) = [r for r in rows if all(r[k] == str(v) for k, v in match.items())]
    return row


def _t_interval(mean: float, sd: float) -> tuple[float, float]:
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    return mean - half, mean + half


def test_curve_csv_holds_each_points_mean_interval_seeds_and_training_count(report):
    folder, _ = report
    rows = _rows(folder / "curve.csv")
    cat_10 = _row(rows, class_name="cat", profile="under", ratio=10.0, attack="fgsm", box="white-box")
    assert float(cat_10["clean_acc"]) == pytest.approx(0.5)
    low, high = _t_interval(0.5, OFFSET)
    assert (float(cat_10["clean_acc_ci_low"]), float(cat_10["clean_acc_ci_high"])) == pytest.approx((low, high))
    assert float(cat_10["adv_acc"]) == pytest.approx(0.005)
    assert float(cat_10["adv_acc_ci_low"]) == pytest.approx(max(0.0, _t_interval(0.005, 0.001)[0]))
    success = [_cat_success(10.0, s) for s in SEEDS]
    assert float(cat_10["success_among_correct"]) == pytest.approx(np.mean(success))
    assert (float(cat_10["success_among_correct_ci_low"]), float(cat_10["success_among_correct_ci_high"])) == \
        pytest.approx(confidence_interval(success))
    assert cat_10["seeds"] == "3" and float(cat_10["train_count"]) == 100  # 1000 / 10
    over = _row(rows, class_name="cat", profile="over", ratio=10.0, attack="fgsm", box="black-box")
    assert float(over["train_count"]) == MAJORITY and float(over["clean_acc"]) == pytest.approx(0.85)


def test_curve_csv_gives_what_the_other_classes_keep_on_each_model(report):
    folder, _ = report
    rows = _rows(folder / "curve.csv")
    for ratio in RATIOS:
        over = _row(rows, class_name="cat", profile="over", ratio=ratio, attack="fgsm", box="white-box")
        assert float(over["others_clean_acc"]) == pytest.approx(_others_clean(ratio))
    # the balanced model's nine other classes: dog at 0.8, seven at 0.5 by default, airplane too
    balanced = _row(rows, class_name="cat", profile="under", ratio=1.0, attack="fgsm", box="white-box")
    assert float(balanced["others_clean_acc"]) == pytest.approx((0.8 + 8 * 0.5) / 9)
    assert float(balanced["others_clean_acc_ci_low"]) < float(balanced["others_clean_acc"])
    table = (folder / "report.md").read_text()
    assert "| over 100 | 1000 | 85.0 [85.0, 85.0] | 40.0 [40.0, 40.0] |" in table


def test_a_strong_attack_on_class_c_alone_reads_the_other_classes_from_another_evaluation():
    results, counts = sweep_results()
    on_cat = [Evaluation(f"pgd-{e.run_id}", e.seed, e.eps, e.sampling, e.class_id, e.source,
                         {m: v for m, v in e.metrics.items() if m.endswith(f"_c{CAT}")},
                         target_version=e.target_version, source_version=e.source_version, attack="pgd", ratio=e.ratio)
              for e in results.evaluations if e.sampling == "over" and e.class_id == CAT]
    points = curve(StudyResults(results.dataset, results.preset, NAMES, [*results.evaluations, *on_cat], None), counts)
    pgd = next(p for p in points if p.attack == "pgd" and p.profile == "over" and p.ratio == 100.0)
    assert pgd.others.mean == pytest.approx(_others_clean(100.0)) and len(pgd.others.values) == 3


def test_the_balanced_model_is_ratio_1_of_both_profiles_and_has_no_black_box_point(report):
    folder, _ = report
    rows = [r for r in _rows(folder / "curve.csv") if r["class_name"] == "dog" and r["ratio"] == "1.0"]
    assert sorted((r["profile"], r["box"]) for r in rows) == [("over", "white-box"), ("under", "white-box")]
    assert [float(r["clean_acc"]) for r in rows] == pytest.approx([0.8, 0.8])
    assert {float(r["train_count"]) for r in rows} == {MAJORITY}
    # 2 classes x 2 profiles x (3 ratios x 2 boxes + the balanced model, white-box)
    assert len(_rows(folder / "curve.csv")) == 2 * 2 * (3 * 2 + 1)


def test_summary_gives_the_collapse_ratio_and_whether_success_among_correct_moves(report):
    folder, _ = report
    rows = _rows(folder / "summary.csv")
    cat = _row(rows, class_name="cat", attack="fgsm", box="white-box")
    assert float(cat["collapse_ratio"]) == 10.0  # the first ratio whose mean accuracy is below 1%
    assert (float(cat["first_ratio"]), float(cat["last_ratio"])) == (1.0, 100.0)
    change = [_cat_success(100.0, s) - _cat_success(1.0, s) for s in SEEDS]
    assert float(cat["success_change"]) == pytest.approx(np.mean(change))
    assert (float(cat["success_change_ci_low"]), float(cat["success_change_ci_high"])) == \
        pytest.approx(confidence_interval(change))
    assert cat["reading"].startswith("more vulnerable")
    dog = _row(rows, class_name="dog", attack="fgsm", box="white-box")
    assert dog["collapse_ratio"] == "not reached"
    assert float(dog["success_change"]) == pytest.approx(0.0, abs=1e-12)
    assert float(dog["clean_change"]) == pytest.approx(0.2 - 0.8)
    assert dog["reading"].startswith("less learned, not more vulnerable")
    black = _row(rows, class_name="dog", attack="fgsm", box="black-box")
    assert float(black["first_ratio"]) == 2.0  # the black-box curve starts above the balanced model
    assert black["reading"].startswith("less learned")  # a success equal up to float rounding does not move


def test_the_slope_is_the_least_squares_change_per_tenfold_ratio():
    results, counts = sweep_results()
    (cat,) = [t for t in trends(curve(results, counts)) if t.class_id == CAT and t.box == "white-box"]
    per_seed = []
    for s in SEEDS:
        ratios = (1.0, *RATIOS)
        success = [_cat_success(r, s) for r in ratios]
        per_seed.append(np.polyfit(np.log10(ratios), success, 1)[0])
    assert cat.success_slope.mean == pytest.approx(np.mean(per_seed))


def test_a_class_that_no_model_gets_right_beyond_the_balanced_one_gets_no_reading():
    def point(ratio: float, clean: float, adv: float, success: float) -> Point:
        return Point(CAT, "under", ratio, "fgsm", "white-box", 0.01, MAJORITY / ratio, Estimate((clean,) * 3),
                     Estimate((adv,) * 3), Estimate((success,) * 3), Estimate((0.5,) * 3))

    (trend,) = trends([point(1.0, 0.5, 0.3, 0.4), point(10.0, 0.0, 0.0, float("nan"))])
    assert trend.collapse_ratio == 10.0
    assert trend.reading == "not measurable: success among correct is defined at ratio 1 only"


def test_long_tail_correlation_worst_class_and_balanced_accuracy(report):
    folder, _ = report
    results, counts = sweep_results()
    (model,) = longtails(results, counts)
    assert model.counts == [math.floor(MAJORITY * 10 ** (-k / 9)) for k in range(10)]
    clean = [_longtail_clean(k) for k in range(10)]
    rho = 1 - 6 * 2 / (10 * (10**2 - 1))  # ranks of ship and truck swapped
    z, half = math.atanh(rho), stats.norm.ppf(0.975) * math.sqrt(1.06 / 7)
    stats_rows = _rows(folder / "longtail.csv")
    row = _row(stats_rows, measure="clean")
    assert float(row["spearman"]) == pytest.approx(rho)
    assert (float(row["spearman_ci_low"]), float(row["spearman_ci_high"])) == \
        pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    assert row["worst_class"] == "ship" and float(row["worst_acc"]) == pytest.approx(min(clean))
    assert float(row["balanced_acc"]) == pytest.approx(np.mean(clean))
    assert (float(row["balanced_acc_ci_low"]), float(row["balanced_acc_ci_high"])) == \
        pytest.approx(_t_interval(np.mean(clean), OFFSET))
    assert {r["measure"] for r in stats_rows} == {"clean", "white-box fgsm", "black-box fgsm"}
    per_class = _rows(folder / "longtail-r10.csv")
    truck = _row(per_class, class_name="truck")
    assert float(truck["train_count"]) == 100
    assert float(truck["whitebox_fgsm_acc"]) == pytest.approx(0.5 * 0.5)  # truck has ship's accuracy
    assert truck["blackbox_fgsm_acc_seeds"] == "3"


def test_spearman_is_undefined_when_either_side_is_constant_and_has_no_interval_on_three_classes():
    assert math.isnan(spearman([1, 2, 3, 4, 5], [0.0] * 5).rho)
    assert math.isnan(spearman([1, 2, 3], [0.1, 0.3, 0.2]).low)
    assert spearman([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5]).rho == pytest.approx(1.0)


def test_figures_and_a_self_contained_report_are_written(report):
    folder, _ = report
    figures = {"curve-c3-cat.png", "curve-c5-dog.png", "longtail-r10.png"}
    assert figures <= {p.name for p in folder.iterdir()}
    assert all((folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in figures)
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and 'src="curve' not in page
    assert '<table id="summary">' in page and '<table id="longtail-r10-stats">' in page
    markdown = (folder / "report.md").read_text()
    assert "![cat over the ratio](curve-c3-cat.png)" in markdown
    assert "more vulnerable" in markdown and "less learned, not more vulnerable" in markdown


def test_results_json_round_trips_the_sweeps_evaluations_ratio_included(tmp_path):
    results, _ = sweep_results()
    back, attack_loss = read_results_files([write_results_file(results, tmp_path / "results.json")])
    order = sorted(results.evaluations, key=lambda e: e.run_id)
    assert sorted(back.evaluations, key=lambda e: e.run_id) == order and attack_loss == "logits"
    assert {e.ratio for e in back.evaluations} == {None, 2.0, 10.0, 100.0}


def test_the_report_entry_point_turns_mlflows_sweep_value_into_the_flag():
    spec = importlib.util.spec_from_file_location("report_entry", REPO / "entrypoints" / "report.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    assert entry.flags(["--preset", "smoke", "--sweep", "true"]) == ["--preset", "smoke", "--sweep"]
    assert entry.flags(["--sweep", "", "--data", "d"]) == ["--data", "d"]
    assert entry.flags(["--sweep", "false"]) == []


def _imbadv(*args: str, store: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": store}
    return subprocess.run([sys.executable, "-m", "imbadv", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_without_sweep_runs_the_report_says_to_run_the_sweep(store):
    from typer.testing import CliRunner

    from imbadv.cli import app

    result = CliRunner().invoke(app, ["report", "--sweep", "--preset", "smoke", "--data", "cifar10"])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("imbadv: error: no finished sweep evaluations")
    assert "run `imbadv sweep --preset smoke --data cifar10` first" in line


@pytest.mark.slow
def test_a_smoke_sweeps_report_reads_training_counts_from_the_registry(store, small_data, session_cache, tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = _imbadv("sweep", "--preset", "smoke", "--data", str(small_data), "--classes", "cat", "--ratios", "1,5,10",
                    "--longtail", "10", "--jobs", "1", "--device", "cpu", "--cache-dir", str(session_cache),
                    store=store, cwd=tmp_path, timeout=1200)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    result = _imbadv("report", "--sweep", "--preset", "smoke", "--data", str(small_data), store=store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "reports" / f"{small_data.name}-smoke-sweep"
    assert {"curve.csv", "summary.csv", "longtail.csv", "longtail-r10.csv", "curve-c3-cat.png", "longtail-r10.png",
            "report.md", "report.html", "results.json"} <= {p.name for p in folder.iterdir()}
    rows = _rows(folder / "curve.csv")
    under = _row(rows, class_name="cat", profile="under", ratio=10.0, box="white-box")
    version = MlflowClient(store, store).get_model_version(f"imbadv-{small_data.name}-under-c3-r10", "1")
    assert float(under["train_count"]) == int(version.tags["train_counts"].split(",")[3])
    assert float(under["train_count"]) < float(_row(rows, class_name="cat", profile="under", ratio=1.0)["train_count"])
    back, _ = read_results_files([folder / "results.json"])
    models = {(e.sampling, e.ratio) for e in back.evaluations}
    assert models >= {("under", 10.0), ("longtail", 10.0), ("balanced", None)}
