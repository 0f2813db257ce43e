"""Results files: the data behind a report, written beside it and read back without the store."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from imbadv.report.analysis import table1
from imbadv.report.output import run_report_from_files, write_report
from imbadv.report.saved import ResultsFileError, read_results_files, write_results_file
from imbadv.study.plan import plan
from imbadv.config import ConfigError
from imbadv.study.config import StudyConfig
from imbadv.tracking.results import Evaluation, StudyResults
from imbadv.tracking.provenance import CODE_PARTS

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _evaluation(seed: int, sampling: str, class_id: int | None, source: str, adv: float) -> Evaluation:
    metrics = {"clean_acc": 0.8, **{f"adv_acc_c{k}": adv for k in range(10)},
               **{f"clean_acc_c{k}": 0.8 for k in range(10)}}
    rng = np.random.default_rng(seed)
    confusion = {"clean": rng.integers(0, 100, (10, 10)), "adversarial": rng.integers(0, 100, (10, 10))}
    return Evaluation(f"run-{seed}-{sampling}-{class_id}-{source}", seed, 0.01, sampling, class_id, source, metrics,
                      confusion, target_version=f"m-{sampling}-{class_id}/{seed + 1}",
                      source_version="self" if source == "self" else f"m-balanced-None/{seed + 1}")


def _study(seeds: list[int], preset: str = "cpu") -> StudyResults:
    evaluations = []
    for seed in seeds:
        evaluations.append(_evaluation(seed, "balanced", None, "self", 0.2 + seed / 10))
        for sampling in ("under", "over"):
            for source in ("self", "balanced"):
                evaluations.append(_evaluation(seed, sampling, 3, source, 0.3 + seed / 10))
    return StudyResults("cifar10", preset, NAMES, evaluations, "study-run")


def test_a_results_file_reads_back_to_the_same_results(tmp_path):
    results = _study([0, 1])
    path = write_results_file(results, tmp_path / "results.json")
    back, attack_loss = read_results_files([path])
    assert attack_loss == "logits" and back.study_run_id == "study-run"
    assert (back.dataset, back.preset, back.class_names) == (results.dataset, results.preset, results.class_names)
    by_cell = {(e.seed, e.sampling, e.class_id, e.source): e for e in back.evaluations}
    for original in results.evaluations:
        copy = by_cell[(original.seed, original.sampling, original.class_id, original.source)]
        assert copy == original  # identity, metrics and versions
        for kind in ("clean", "adversarial"):
            assert np.array_equal(copy.confusion[kind], original.confusion[kind])


def test_files_of_different_seeds_combine_into_one_table_with_intervals(tmp_path):
    write_results_file(_study([0]), tmp_path / "s0.json")
    write_results_file(_study([1, 2]), tmp_path / "s12.json")
    combined, _ = read_results_files([tmp_path / "s0.json", tmp_path / "s12.json"])
    assert combined.seeds == [0, 1, 2] and combined.study_run_id is None  # no one study run to attach to
    cat = table1(combined)[3]
    assert cat["whitebox_undersample"].values == pytest.approx((0.3, 0.4, 0.5))
    whole = tmp_path / "whole"
    write_report(_study([0, 1, 2]), whole)
    folder = run_report_from_files([str(tmp_path / "s0.json"), str(tmp_path / "s12.json")], str(tmp_path / "out"))
    for name in ("table1.csv", "beyond.csv", "claims.csv"):
        assert (folder / name).read_text() == (whole / name).read_text()
    assert read_results_files([folder / "results.json"])[0].seeds == [0, 1, 2]


@pytest.mark.parametrize(("change", "message"), [
    ({"preset": "smoke"}, "holds preset 'smoke' but"),
    ({"class_names": list(reversed(NAMES))}, "holds class_names"),
    ({"attack_loss": "keras"}, "holds attack_loss 'keras'")])
def test_files_of_other_settings_are_refused(tmp_path, change, message):
    write_results_file(_study([0]), tmp_path / "a.json")
    other = json.loads(write_results_file(_study([1]), tmp_path / "b.json").read_text()) | change
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(ResultsFileError, match=message):
        read_results_files([tmp_path / "a.json", tmp_path / "b.json"])


def test_a_seed_in_two_files_is_refused(tmp_path):
    write_results_file(_study([0]), tmp_path / "a.json")
    write_results_file(_study([0, 1]), tmp_path / "b.json")
    with pytest.raises(ResultsFileError, match=r"seed 0's balanced self fgsm evaluation at eps 0.01 is in both"):
        read_results_files([tmp_path / "a.json", tmp_path / "b.json"])


@pytest.mark.parametrize(("text", "message"), [
    (None, "no results file at"), ("not json", "is not a results file"),
    ('{"format": "other"}', "is not an imbadv-study-results/1 file"),
    ('{"format": "imbadv-study-results/1"}', "lacks dataset, preset"),
])
def test_a_file_that_is_not_results_is_refused(tmp_path, text, message):
    path = tmp_path / "results.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ResultsFileError, match=message):
        read_results_files([path])


def test_a_broken_evaluation_is_refused_with_its_file(tmp_path):
    values = json.loads(write_results_file(_study([0]), tmp_path / "r.json").read_text())
    del values["evaluations"][0]["metrics"]
    (tmp_path / "r.json").write_text(json.dumps(values))
    with pytest.raises(ResultsFileError, match=r"r\.json holds an evaluation it cannot describe"):
        read_results_files([tmp_path / "r.json"])


def test_report_from_files_is_one_line_error_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "imbadv", "report", "--results", str(tmp_path / "missing.json"),
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "no results file at" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
    mixed = subprocess.run([sys.executable, "-m", "imbadv", "report", "--results", "a.json", "--preset", "cpu"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert mixed.returncode != 0 and "--preset cannot be combined with --results" in mixed.stderr


def test_first_seed_plans_the_seeds_after_it():
    code = dict.fromkeys(CODE_PARTS, "c")
    steps = plan(StudyConfig(preset="smoke", first_seed=1, seeds=2, classes="3"), 10, "d", code)
    assert {dict(s.options)["seed"] for s in steps} == {1, 2}
    alone = {s.key for s in plan(StudyConfig(preset="smoke", seeds=3, classes="3"), 10, "d", code)}
    assert {s.key for s in steps} < alone  # the same steps as in a study of seeds 0 to 2
    with pytest.raises(ConfigError, match="first seed -1 is negative"):
        plan(StudyConfig(preset="smoke", first_seed=-1), 10, "d", dict.fromkeys(CODE_PARTS, "c"))


def test_results_file_keeps_every_metric_exactly(tmp_path):
    results = _study([0])
    odd = dataclasses.replace(results.evaluations[0], metrics={"adv_acc_c3": 0.1 + 0.2, "clean_acc": 1 / 3})
    results = dataclasses.replace(results, evaluations=[odd, *results.evaluations[1:]])
    back, _ = read_results_files([write_results_file(results, tmp_path / "r.json")])
    (first,) = [e for e in back.evaluations if e.sampling == "balanced"]
    assert first.metrics == {"adv_acc_c3": 0.1 + 0.2, "clean_acc": 1 / 3}
