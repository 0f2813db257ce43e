"""The report of a partial study (`reproduce --classes`), of a smoke study and of one seed, on hand-made
evaluation records: means over the classes that ran, the header, withheld verdicts, and what the figures draw."""

from __future__ import annotations

import csv

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from imbadv.report import figures
from imbadv.report.analysis import claims, column_means, paper_column_means, study_classes, study_scope, table1
from imbadv.report.output import _table1_markdown, write_report
from imbadv.tracking.results import Evaluation, StudyResults

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CAT, DOG = 3, 5
MODELS = [(s, src) for s in ("under", "over") for src in ("self", "balanced")]


def evaluation(seed: int, sampling: str, class_id: int | None, source: str, adv: dict[int, float],
               default: float = 0.5) -> Evaluation:
    metrics = {}
    for k in range(10):
        metrics[f"adv_acc_c{k}"] = adv.get(k, default) + 0.01 * seed
        metrics[f"clean_acc_c{k}"] = 0.8
        metrics[f"rel_drop_c{k}"] = (0.8 - metrics[f"adv_acc_c{k}"]) / 0.8
        metrics[f"success_rate_c{k}"] = 0.5
    confusion = np.full((10, 10), 10)
    return Evaluation(f"run-{seed}-{sampling}-{class_id}-{source}", seed, 0.01, sampling, class_id, source, metrics,
                      {"clean": confusion, "adversarial": confusion})


def partial_study(classes: tuple[int, ...], seeds: int = 1, preset: str = "paper", balanced: float = 0.5,
                  values: dict[tuple[str, str], float] | None = None, skip: tuple[tuple[str, str, int], ...] = (),
                  balanced_at: dict[int, float] | None = None) -> StudyResults:
    """A study of `classes` only: the balanced model (on every class) and the four class-c models of each."""
    evaluations = []
    for seed in range(seeds):
        evaluations.append(evaluation(seed, "balanced", None, "self", balanced_at or {}, default=balanced))
        for c in classes:
            for sampling, source in MODELS:
                if (sampling, source, c) not in skip:
                    value = (values or {}).get((sampling, source), 0.4)
                    evaluations.append(evaluation(seed, sampling, c, source, {c: value}))
    return StudyResults("cifar10", preset, NAMES, evaluations, None)


def test_the_papers_means_are_over_the_classes_the_study_ran():
    rows = table1(partial_study((0, 1, 2, 3, 5)))
    paper = paper_column_means(rows)
    assert paper["blackbox_undersample"] == pytest.approx(0.460)
    assert paper["blackbox_oversample"] == pytest.approx(0.798)
    assert paper["whitebox_undersample"] == pytest.approx(0.1078)
    assert paper["whitebox_oversample"] == pytest.approx(0.416)
    assert paper["whitebox_balanced"] == pytest.approx(0.258)  # the balanced model is evaluated on every class
    ours = column_means(rows, 1)
    assert ours["whitebox_undersample"].mean == pytest.approx(0.4)  # not pulled towards NaN or 0 by the others
    assert paper_column_means()["blackbox_undersample"] == pytest.approx(0.538)  # the paper's own ten


def test_the_mean_rows_paper_values_are_the_two_class_means():
    results = partial_study((CAT, DOG))
    _, body = _table1_markdown(results, 0.01)
    mean_row, difference_row = body[-2], body[-1]
    assert mean_row[0] == "**mean**"
    papers = [float(cell.strip("*").split(" / ")[1]) for cell in mean_row[1:]]
    # blackbox under, blackbox over, whitebox balanced, whitebox under, whitebox over: cat and dog only
    assert papers == pytest.approx([34.0, 74.0, 25.8, 4.75, 28.5], abs=0.051)
    assert float(difference_row[1]) == pytest.approx(40.0 - 34.0, abs=0.051)  # ours 40% over the same two


def test_the_report_files_say_which_classes_and_compare_over_them(tmp_path):
    results = partial_study((CAT, DOG))
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "2 of 10 classes (cat, dog), 1 seed" in report
    assert "Plumbing check only" not in report
    assert "blackbox_undersample: 2 of 10 classes (cat, dog)" in report  # the note on what each mean covers
    html = (tmp_path / "report.html").read_text()
    assert "2 of 10 classes (cat, dog), 1 seed" in html and 'id="means-note"' in html
    with (tmp_path / "table1.csv").open(newline="") as handle:
        mean = next(row for row in csv.DictReader(handle) if row["class_name"] == "mean")
    assert float(mean["blackbox_undersample_paper"]) == pytest.approx(0.34)
    assert float(mean["blackbox_undersample_ours"]) == pytest.approx(0.40)
    assert float(mean["whitebox_balanced_paper"]) == pytest.approx(0.258)
    with (tmp_path / "claims.csv").open(newline="") as handle:
        verdicts = {row["verdict"] for row in csv.DictReader(handle)}
    assert verdicts <= {"holds", "does not hold", "not settled"}


def test_the_header_names_the_classes_and_seeds():
    five = "5 of 10 classes (airplane, automobile, bird, cat, dog), 1 seed"
    assert study_scope(partial_study((0, 1, 2, 3, 5))) == five
    assert study_scope(partial_study(tuple(range(10)), seeds=3)) == "all 10 classes, 3 seeds"
    assert study_classes(partial_study((CAT,))) == [CAT]


def test_claims_compare_over_the_classes_the_study_ran():
    # Balanced: 0.1 on cat and dog, 0.9 elsewhere; under-sampled cat and dog: 0.2 white-box. Over all ten
    # classes the balanced mean (0.74) is above the under-sampled one; over cat and dog it is below.
    results = partial_study((CAT, DOG), balanced=0.9, balanced_at={CAT: 0.1, DOG: 0.1},
                            values={("under", "self"): 0.2, ("under", "balanced"): 0.35})
    checks = {c.claim.split(" (")[0]: c for c in claims(results)}
    vulnerable = checks["Under-sampled models are more vulnerable than the balanced model"]
    assert vulnerable.holds is False
    assert vulnerable.paper == "4.8% vs 13.0% over 2 of 10 classes (cat, dog)"  # the paper's, over cat and dog
    quoted = checks["Under-sampled models attacked black-box keep 53.8% on average"]
    assert "34.0% over 2 of 10 classes (cat, dog)" in quoted.paper
    assert quoted.holds is True  # 35% is near the paper's 34% on cat and dog, far from its ten-class 53.8%


def test_a_smoke_study_gets_no_verdicts_and_a_warning(tmp_path):
    results = partial_study((CAT,), preset="smoke")
    checks = claims(results)
    assert checks and all(c.verdict == "n/a (smoke)" for c in checks)
    assert any(c.holds is not None for c in checks)  # the checks still ran
    write_report(results, tmp_path)
    first_lines = (tmp_path / "report.md").read_text().splitlines()[:4]
    assert any("Plumbing check only" in line for line in first_lines)
    html = (tmp_path / "report.html").read_text()
    assert html.index('id="plumbing"') < html.index('<table id="table1">')
    assert "holds" not in html.split('<table id="claims">')[1].split("</table>")[0]
    with (tmp_path / "claims.csv").open(newline="") as handle:
        assert {row["verdict"] for row in csv.DictReader(handle)} == {"n/a (smoke)"}


def test_the_beyond_table_scrolls_within_the_page(tmp_path):
    write_report(partial_study((CAT,)), tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert '<div class="scroll"><table id="beyond">' in html
    assert ".scroll{overflow-x:auto" in html and "#beyond{font-size:11px}" in html


def _bars(ax) -> dict[str, list[tuple[float, float]]]:
    """Per series: (x centre, height) of each bar drawn."""
    return {c.get_label(): [(p.get_x() + p.get_width() / 2, p.get_height()) for p in c.patches]
            for c in ax.containers if isinstance(c, BarContainer)}


def _missing_marks(ax) -> list[float]:
    return [t.get_position()[0] for t in ax.texts if t.get_text() == figures.MISSING]


def test_a_missing_cell_gets_no_bar_but_a_mark():
    results = partial_study((CAT, DOG), skip=(("over", "balanced", DOG), ("under", "self", DOG)))
    fig = figures.relative_drop_figure(results)
    ax = fig.axes[0]
    bars = _bars(ax)
    assert [label for label, _, _ in figures.ATTACKED] == list(bars)
    assert len(bars["over, black-box"]) == 1 and len(bars["under, white-box"]) == 1  # cat only
    assert len(bars["balanced, white-box"]) == 2
    assert all(np.isfinite(h) for series in bars.values() for _, h in series)
    cat_x, dog_x = ax.get_xticks()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]  # the classes that ran
    marks = _missing_marks(ax)
    assert len(marks) == 2 and all(abs(m - dog_x) < 0.5 for m in marks)
    assert all(abs(x - cat_x) < 0.5 for x, _ in bars["over, black-box"])
    plt.close(fig)

    fig = figures.clean_accuracy_figure(results)  # figure 3: the under-sampled dog model is missing too
    assert len(_bars(fig.axes[0])["under-sampled c"]) == 1 and len(_missing_marks(fig.axes[0])) == 1
    plt.close(fig)

    fig = figures.confusions_figure(results)  # figure 7: dog -> cat has no under-sampled dog model
    ax = fig.axes[0]
    bars = _bars(ax)
    assert len(bars["balanced, attacked"]) == 2
    assert len(bars["under-sampled, clean"]) == 1 and len(bars["under-sampled, attacked"]) == 1
    assert len(_missing_marks(ax)) == 2
    plt.close(fig)


@pytest.mark.parametrize("seeds, expected", [(1, 0), (3, 5)])
def test_error_bars_only_with_an_interval(seeds, expected):
    fig = figures.relative_drop_figure(partial_study((CAT,), seeds=seeds))
    errorbars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == expected  # one per series with several seeds; none at all with one seed
    plt.close(fig)
