"""Write the natural-imbalance report (`imbadv report --natural`): per_class.csv, correlation.csv,
confusions.csv, families.csv, remedies.csv, a figure per remedy, report.md, a self-contained
report.html and results.json (imbadv.report.natural computes the numbers)."""

from __future__ import annotations

import math
from pathlib import Path

from imbadv.config import ConfigError
from imbadv.report import sweep_figures
from imbadv.report.analysis import is_plumbing
from imbadv.report.natural import BOXES, NaturalModel, created_confusions, family_shares, natural_models
from imbadv.report.remedies import (FAKE_GAIN, PLAIN, remedies_figure, remedies_table, remedy_rows,
                                    write_remedies_csv)
from imbadv.report.saved import RESULTS_FILE, write_results_file
from imbadv.report.sweep import CLEAN, Counts, registered_train_counts, report_eps, seeds_text
from imbadv.report.sweep_output import (Block, _attack_title, _columns, _html, _markdown, _measure_column, _pct,
                                        _values, _write_csv, check_report_options, report_folder)
from imbadv.tracking.results import StudyResults

SHOWN = 10  # the rarest and the most common classes named in the report


def write_csvs(results: StudyResults, models: list[NaturalModel], folder: Path) -> None:
    """per_class.csv (every remedy, eps and class) and correlation.csv (per remedy, eps and measure)."""
    names = results.class_names
    measures = list(dict.fromkeys(m for model in models for m in model.accuracy))
    attacks = [m for m in measures if m != CLEAN]
    header = ["remedy", "eps", "class_id", "class_name", "train_count"]
    header += [c for m in measures for c in _columns(_measure_column(m))]
    header += [c for m in attacks for c in _columns(_measure_column(m).replace("_acc", "_success_among_correct"))]
    rows = []
    for model in models:
        for k in range(len(names)):
            row: list[object] = [model.label, model.eps, k, names[k], model.counts[k]]
            for m in measures:
                row += _values(model.accuracy[m][k]) if m in model.accuracy else [""] * 3
            for m in attacks:
                row += _values(model.success[m][k]) if m in model.success else [""] * 3
            rows.append(row)
    _write_csv(folder / "per_class.csv", header, rows)
    stats = []
    for model in models:
        for m in model.accuracy:
            r, worst = model.correlation(m), model.worst(m)
            stats.append([model.label, model.eps, m, r.rho, r.low, r.high, r.n,
                          "" if worst is None else names[worst], *_values(model.mean_class[m]),
                          *_values(model.worst_class[m])])
    _write_csv(folder / "correlation.csv", ["remedy", "eps", "measure", "spearman_rho", "rho_ci_low", "rho_ci_high",
                                            "classes", "worst_class", *_columns("mean_class_acc"),
                                            *_columns("worst_class_acc")], stats)


def _stats_table(results: StudyResults, model: NaturalModel) -> tuple[list[str], list[list[str]]]:
    body = []
    for m, row in model.accuracy.items():
        worst = model.worst(m)
        worst_text = "-" if worst is None else f"{results.class_names[worst]} ({_pct(row[worst].mean)})"
        body.append([m, model.correlation(m).text(), model.mean_class[m].text(), model.worst_class[m].text(),
                     worst_text])
    return ["measure", "Spearman rho [95% CI]", "mean class (%)", "worst class (%)", "worst class"], body


def _extremes_table(results: StudyResults, model: NaturalModel) -> tuple[list[str], list[list[str]]]:
    """The SHOWN rarest classes, then the SHOWN most common (half and half of fewer classes), with each measure."""
    order = model.by_count()
    rare = min(SHOWN, len(order) // 2)
    shown = order[:rare] + order[max(rare, len(order) - SHOWN):]
    body = []
    for rank, k in enumerate(shown):
        kind = "rare" if rank < rare else "common"
        body.append([results.class_names[k], kind, f"{model.counts[k]:.0f}" if model.counts[k] == model.counts[k]
                     else "-", *(row[k].text() for row in model.accuracy.values())])
    return ["class", "", "images", *model.accuracy], body


def _confusion_blocks(results: StudyResults, eps: float, folder: Path) -> list[Block]:
    """The confusions each attack creates on the plain model, and where the look-alike families' errors go."""
    names = results.class_names
    attack = results.attacks[-1]  # the strongest that ran
    confusion_rows, family_rows, blocks = [], [], []
    for box, source in BOXES:
        top = created_confusions(results, PLAIN, attack, source, eps)
        # a box the plain model was not attacked from has no shares to give
        families = [f for f in family_shares(results, PLAIN, attack, source, eps) if not math.isnan(f.attacked.mean)]
        confusion_rows += [[attack, box, eps, names[c.true], names[c.predicted], *_values(c.clean),
                            *_values(c.attacked), *_values(c.created)] for c in top]
        family_rows += [[attack, box, eps, " ".join(names[k] for k in f.family), *_values(f.clean),
                         *_values(f.attacked), f.uniform] for f in families]
        if top or families:
            blocks.append(("h3", f"{box} {attack}"))
        if top:
            blocks += [("table", ["true", "taken for", "clean (%)", "attacked (%)", "created (points)"],
                        [[names[c.true], names[c.predicted], c.clean.text(), c.attacked.text(), c.created.text()]
                         for c in top], f"confusions-{source}")]
        if families:
            blocks += [("table", ["look-alike family", "errors inside, clean (%)", "errors inside, attacked (%)",
                                  "uniform errors (%)"],
                        [[", ".join(names[k] for k in f.family), f.clean.text(), f.attacked.text(), _pct(f.uniform)]
                         for f in families], f"families-{source}")]
    _write_csv(folder / "confusions.csv", ["attack", "box", "eps", "true", "predicted", *_columns("clean_share"),
                                           *_columns("attacked_share"), *_columns("created_share")], confusion_rows)
    _write_csv(folder / "families.csv", ["attack", "box", "eps", "family", *_columns("inside_share_clean"),
                                         *_columns("inside_share_attacked"), "inside_share_uniform"], family_rows)
    return blocks


def write_natural_report(results: StudyResults, folder: Path, counts: Counts) -> dict[str, Path]:
    """Write every file of the natural-imbalance report into `folder`; `counts`: images each class trained
    on, by target version. Figures and tables at `report_eps`, the CSVs at every eps. Returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    models, eps = natural_models(results, counts), report_eps(results)
    if not models:
        raise ConfigError(f"no finished evaluations of natural models of {results.dataset} with preset "
                          f"{results.preset}: run `imbadv natural` first")
    write_csvs(results, models, folder)
    shown = [m for m in models if m.eps == eps]
    plain = next((m for m in shown if m.remedy == PLAIN), shown[0])
    intro = (f"The natural profile (every training image) of `{results.dataset}`, {len(results.class_names)} "
             f"classes, preset `{results.preset}`, {seeds_text(results)}, under "
             f"{', '.join(m.label for m in shown)}; "
             f"{'; '.join(_attack_title(results, a) for a in results.attacks)} at eps = {eps:g}, white-box and "
             "black-box from the target's peer (the same model of the study's next seed). Accuracy on each "
             "class's test images in %, mean [95% CI] over seeds.")
    blocks: list[Block] = [("p", intro), ("h2", "Does vulnerability follow a class's frequency?"),
                           ("p", "Spearman's rank correlation between the images a class trained on and its "
                                 "accuracy, over the classes (95% interval by Fisher's z); the mean and the "
                                 "worst class's accuracy, per seed then across seeds.")]
    for model in shown:
        labels = {m: f"{m}: rho {model.correlation(m).text()}; worst class {model.worst_class[m].text()}%"
                  for m in model.accuracy}
        title = (f"{results.dataset}, natural, {model.label}, eps={eps:g}\n{results.preset} preset, "
                 f"{seeds_text(results)}")
        figure = sweep_figures.count_figure(results, model.counts, model.accuracy, labels, title,
                                            folder / f"natural-{model.label}.png")
        blocks += [("h3", model.label), ("img", f"per-class accuracy against training images, {model.label}",
                                         figure), ("table", *_stats_table(results, model), f"stats-{model.label}")]
    blocks += [("h2", f"The {SHOWN} rarest and the {SHOWN} most common classes ({plain.label})"),
               ("table", *_extremes_table(results, plain), "extremes"),
               ("h2", f"Confusions the attack creates ({plain.label})"),
               ("p", "Per true class, the share of its test images taken for another class, clean and after the "
                     "attack; the pairs the attack adds most to. Look-alike families are classes whose names "
                     "differ only in a number (the speed limits): the share of the family's errors that land "
                     "on another member, against a uniform error's."),
               *_confusion_blocks(results, eps, folder)]
    rows = remedy_rows(results, plain.counts)
    if rows:
        write_remedies_csv(rows, folder / "remedies.csv")
        blocks += [("h2", "Remedies"),
                   ("p", "The rare classes (the half with the fewest training images) under each remedy: clean "
                         "and attacked accuracy, the gain over plain cross-entropy paired by seed, the mean "
                         "and worst class, and the other classes' clean accuracy with its change from plain "
                         f"cross-entropy. Fake gain: a PGD gain that AutoAttack takes back by more than "
                         f"{100 * FAKE_GAIN:g} points."),
                   ("img", "the rare classes under each remedy", remedies_figure(rows, eps, folder / "remedies.png")),
                   ("table", *remedies_table(rows, eps), "remedies")]
    blocks += [("h2", "Files"), ("p", "per_class.csv: every class under every remedy and eps; correlation.csv: the "
                                      "rank correlations, mean and worst class; confusions.csv and families.csv: "
                                      "the confusions above; remedies.csv; results.json: the evaluations.")]
    title = f"imbadv natural-imbalance report: {results.dataset}, {results.preset}"
    warning = (f"Plumbing check only: preset `{results.preset}` trains tiny models for seconds; its numbers say "
               "nothing about imbalance." if is_plumbing(results) else "")
    (folder / "report.md").write_text(_markdown(title, warning, blocks))
    (folder / "report.html").write_text(_html(title, warning, blocks))
    return {p.name: p for p in folder.iterdir()}


def run_natural_report(preset: str, data: str, output_dir: str, attack_loss: str = "logits",
                       images_per_class: int = 0) -> Path:
    """Read `imbadv natural`'s finished runs and write the report to `<output_dir>/<dataset>-<preset>-natural/`
    (`-keras-loss`, `-<N>-per-class` appended as for Table 1), with the evaluations in `results.json`."""
    from imbadv.core.data import dataset_name
    from imbadv.tracking.results import load_results

    dataset = dataset_name(data)
    check_report_options(attack_loss, images_per_class)
    everything = load_results(dataset, preset, with_confusions=True, attack_loss=attack_loss,
                              images_per_class=images_per_class, paper_models=False)
    option = ("" if attack_loss == "logits" else f" --attack-loss {attack_loss}") + \
        (f" --images-per-class {images_per_class}" if images_per_class else "")
    results = StudyResults(everything.dataset, everything.preset, everything.class_names,
                           [e for e in everything.evaluations if e.sampling == "natural"], everything.study_run_id,
                           everything.images_per_class)
    if not results.evaluations:
        raise ConfigError(f"no finished evaluations of natural models of {dataset} with preset {preset}{option} in "
                          f"this tracking store: run `imbadv natural --preset {preset} --data {data}{option}` first")
    folder = report_folder(output_dir, f"{dataset}-{preset}-natural", attack_loss, images_per_class)
    write_natural_report(results, folder, registered_train_counts(results))
    write_results_file(results, folder / RESULTS_FILE, attack_loss)
    print(f"natural-imbalance report written to {folder}/report.html")
    return folder

