"""Write the sweep's report: curve.csv, summary.csv, the long-tail CSVs, a figure per class and per
long-tailed model, report.md, a self-contained report.html and results.json (imbadv.report.sweep computes
the numbers, imbadv.report.sweep_figures draws them)."""

from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path

from imbadv.config import ConfigError
from imbadv.report import sweep_figures
from imbadv.report.analysis import Estimate, is_plumbing
from imbadv.report.output import ATTACK_TITLES, _html_table, _markdown_table
from imbadv.report.remedies import (FAKE_GAIN, RemedyRow, remedies_figure, remedies_table, remedy_rows,
                                    write_remedies_csv)
from imbadv.report.saved import RESULTS_FILE, write_results_file
from imbadv.report.sweep import (COLLAPSE, NAN, NOT_REACHED, Counts, Longtail, Point, Trend, curve,
                                 longtail_ratios, longtails, registered_train_counts, report_eps, seeds_text,
                                 sweep_classes, sweep_ratios, trends)
from imbadv.tracking.results import StudyResults

Block = tuple  # ("h2" | "h3" | "p", text), ("table", header, body, id) or ("img", title, path)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


def _columns(name: str) -> list[str]:
    return [name, f"{name}_ci_low", f"{name}_ci_high"]


def _values(estimate: Estimate) -> list[float]:
    return [estimate.mean, *estimate.interval]


def _measure_column(measure: str) -> str:
    """"clean" -> clean_acc, "white-box fgsm" -> whitebox_fgsm_acc."""
    return measure.replace("-", "").replace(" ", "_") + "_acc"


def write_csvs(results: StudyResults, points: list[Point], trend_rows: list[Trend], longtail: list[Longtail],
               folder: Path) -> None:
    """curve.csv, summary.csv, longtail.csv (the statistics) and longtail-r<R>.csv (per class)."""
    name = results.class_names
    _write_csv(folder / "curve.csv", ["eps", "attack", "class_id", "class_name", "profile", "ratio", "box",
                                      "train_count", *_columns("clean_acc"), *_columns("adv_acc"),
                                      *_columns("success_among_correct"), "seeds", *_columns("others_clean_acc")],
               [[p.eps, p.attack, p.class_id, name[p.class_id], p.profile, p.ratio, p.box, p.train_count,
                 *_values(p.clean), *_values(p.adv), *_values(p.success), p.seeds, *_values(p.others)]
                for p in points])
    _write_csv(folder / "summary.csv", ["eps", "attack", "class_id", "class_name", "box", "collapse_ratio",
                                        "first_ratio", "last_ratio", "success_first", "success_last",
                                        *_columns("success_change"), *_columns("success_slope_per_decade"),
                                        *_columns("clean_change"), "reading"],
               [[t.eps, t.attack, t.class_id, name[t.class_id], t.box,
                 NOT_REACHED if t.collapse_ratio is None else t.collapse_ratio, t.first, t.last,
                 t.success_first.mean, t.success_last.mean, *_values(t.success_change), *_values(t.success_slope),
                 *_values(t.clean_change), t.reading] for t in trend_rows])
    stats_rows = []
    for lt in longtail:
        for measure in lt.accuracy:
            r, worst = lt.correlation(measure), lt.worst(measure)
            stats_rows.append([lt.ratio, lt.eps, measure, r.rho, r.low, r.high, r.n,
                               "" if worst is None else name[worst],
                               NAN if worst is None else lt.accuracy[measure][worst].mean,
                               *_values(lt.balanced[measure])])
    _write_csv(folder / "longtail.csv", ["ratio", "eps", "measure", *_columns("spearman"), "classes", "worst_class",
                                         "worst_acc", *_columns("balanced_acc")], stats_rows)
    for ratio in longtail_ratios(results):
        mine = [lt for lt in longtail if lt.ratio == ratio]
        measures = list(dict.fromkeys(m for lt in mine for m in lt.accuracy))
        header = ["eps", "class_id", "class_name", "train_count"]
        header += [c for m in measures for c in [*_columns(_measure_column(m)), f"{_measure_column(m)}_seeds"]]
        rows = [[lt.eps, k, name[k], lt.counts[k]]
                + [v for m in measures for v in _per_class_values(lt.accuracy.get(m), k)]
                for lt in mine for k in range(len(name))]
        _write_csv(folder / f"longtail-r{ratio:g}.csv", header, rows)


def _per_class_values(row: list[Estimate] | None, k: int) -> list[float]:
    if row is None:
        return [NAN, NAN, NAN, 0]
    return [*_values(row[k]), sum(math.isfinite(v) for v in row[k].values)]


def _pct(value: float) -> str:
    return f"{value * 100:.1f}" if math.isfinite(value) else "-"


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return NOT_REACHED
    return "1 (balanced)" if ratio == 1.0 else f"{ratio:g}"


def _attack_title(results: StudyResults, attack: str) -> str:
    settings = sorted({e.attack_params for e in results.evaluations if e.attack == attack and e.attack_params})
    return ATTACK_TITLES.get(attack, attack) + (f" ({'; '.join(settings)})" if settings else "")


def _trend_blocks(results: StudyResults, trend_rows: list[Trend]) -> list[Block]:
    """The answer per attack in words, then the table behind it."""
    lines = []
    for attack in results.attacks:
        mine = [t for t in trend_rows if t.attack == attack and t.box == "white-box"]
        if not mine:
            continue
        readings = [t.reading.split(":")[0] for t in mine]
        counted = ", ".join(f"{readings.count(r)} {r}" for r in dict.fromkeys(readings))
        collapsed = [f"{results.class_names[t.class_id]} from ratio {t.collapse_ratio:g}" for t in mine
                     if t.collapse_ratio is not None]
        lines.append(f"{ATTACK_TITLES.get(attack, attack)} white-box, {len(mine)} classes: {counted}. Accuracy below "
                     f"{COLLAPSE:.0%}: {', '.join(collapsed) or 'no class at any ratio'}.")
    body = [[results.class_names[t.class_id], ATTACK_TITLES.get(t.attack, t.attack), t.box,
             _ratio_text(t.collapse_ratio), f"{_pct(t.success_first.mean)} at {t.first:g} -> "
             f"{_pct(t.success_last.mean)} at {t.last:g}", t.success_change.text(), t.success_slope.text(),
             t.clean_change.text(), t.reading] for t in trend_rows]
    header = ["class", "attack", "box", f"accuracy below {COLLAPSE:.0%} from ratio", "success among correct (%)",
              "change (points)", "per tenfold ratio (points)", "clean change (points)", "reading"]
    text = ("Under-sampling side. A class the model learned less has fewer images to lose, so its accuracy falls "
            "either way; success among correct (the share of the images the model had right that the attack "
            "turns wrong) says whether what it still knows is easier to attack. Change: largest ratio minus "
            "smallest, paired over seeds; a reading needs the interval wholly on one side of 0 (one seed: "
            "the sign).")
    return [("p", " ".join(lines)), ("p", text), ("table", header, body, "summary")]


def _class_table(results: StudyResults, points: list[Point], c: int) -> tuple[list[str], list[list[str]]]:
    """Class c's models from the most under-sampled to the most over-sampled: its training count, clean
    accuracy, the other classes' mean clean accuracy and, per attack and box, accuracy with success among
    correct in brackets."""
    at = {(p.profile, p.ratio, p.attack, p.box): p for p in points if p.class_id == c}
    ratios = sweep_ratios(results)
    models = [("under", r) for r in reversed(ratios) if r != 1.0] + [("under", 1.0)] + \
        [("over", r) for r in ratios if r != 1.0]
    columns = [(a, box) for a in results.attacks for box in ("white-box", "black-box")
               if any(k[2:] == (a, box) for k in at)]
    header = ["model", "images of the class", "clean", "others clean"] + \
        [f"{ATTACK_TITLES.get(a, a)} {box}" for a, box in columns]
    body = []
    for profile, ratio in models:
        row = [at.get((profile, ratio, a, box)) for a, box in columns]
        found = [p for p in row if p is not None]
        if not found:
            continue
        count = found[0].train_count
        body.append(["balanced" if ratio == 1.0 else f"{profile} {ratio:g}", f"{count:.0f}" if count == count else "-",
                     found[0].clean.text(), found[0].others.text()]
                    + [f"{p.adv.text()} ({_pct(p.success.mean)})" if p else "-" for p in row])
    return header, body


def _longtail_blocks(results: StudyResults, lt: Longtail, figure: Path) -> list[Block]:
    names = results.class_names
    stats = []
    for measure, row in lt.accuracy.items():
        worst = lt.worst(measure)
        worst_text = "-" if worst is None else f"{names[worst]} ({_pct(row[worst].mean)})"
        stats.append([measure, lt.correlation(measure).text(), worst_text, lt.balanced[measure].text()])
    per_class = [[names[k], f"{lt.counts[k]:.0f}" if lt.counts[k] == lt.counts[k] else "-"]
                 + [row[k].text() for row in lt.accuracy.values()] for k in range(len(names))]
    return [("h3", f"Long-tailed, ratio {lt.ratio:g}"), ("img", f"Long-tailed model, ratio {lt.ratio:g}", figure),
            ("table", ["measure", "Spearman rho [95% CI]", "worst class (%)", "balanced accuracy (%)"], stats,
             f"longtail-r{lt.ratio:g}-stats"),
            ("table", ["class", "images", *lt.accuracy], per_class, f"longtail-r{lt.ratio:g}")]


def write_sweep_report(results: StudyResults, folder: Path, counts: Counts,
                       remedies: list[RemedyRow] | None = None) -> dict[str, Path]:
    """Write every file of the sweep's report into `folder`; `counts`: images each class trained on, by
    target version; `remedies`: the rows of `imbadv.report.remedies` where the sweep trained remedies.
    Figures and tables at `report_eps`, the CSVs at every eps. Returns the files by name."""
    folder.mkdir(parents=True, exist_ok=True)
    points, eps = curve(results, counts), report_eps(results)
    trend_rows, models = trends(points), longtails(results, counts)
    write_csvs(results, points, trend_rows, models, folder)
    names = results.class_names
    classes, ratios, tails = sweep_classes(results), sweep_ratios(results), longtail_ratios(results)
    intro = (f"Classes {', '.join(names[c] for c in classes) or 'none'}, each under- and over-sampled at ratios "
             f"{', '.join(f'{r:g}' for r in ratios)}; long-tailed models at ratios "
             f"{', '.join(f'{r:g}' for r in tails) or 'none'}; {seeds_text(results)}. Dataset `{results.dataset}`, "
             f"preset `{results.preset}`, {'; '.join(_attack_title(results, a) for a in results.attacks)} at "
             f"eps = {eps:g}" + (f" (the CSVs hold every eps: {', '.join(f'{e:g}' for e in results.eps_values)})"
                                 if len(results.eps_values) > 1 else "")
             + ". Accuracies on the class's test images in %, mean [95% CI] over seeds. Ratio 1 is the balanced "
             "model, the black-box source: the black-box curves start above it.")
    blocks: list[Block] = [("p", intro), ("h2", "Rarer classes: more vulnerable, or only less learned?"),
                           *_trend_blocks(results, [t for t in trend_rows if t.eps == eps]),
                           ("h2", "Each class over the ratio"),
                           ("p", "Accuracy after each attack with the clean accuracy, its ceiling, and success among "
                                 "correct, against the ratio: under-sampling left of the balanced model (1/ratio), "
                                 "over-sampling right; bands: 95% intervals. Tables: accuracy (success among "
                                 "correct in brackets); others clean: the model's mean clean accuracy on the other "
                                 "classes, what the class's share of the training set costs them.")]
    eps_points = [p for p in points if p.eps == eps]
    for c in classes:
        figure = sweep_figures.class_figure(results, eps_points, c, eps, folder / f"curve-c{c}-{names[c]}.png")
        header, body = _class_table(results, eps_points, c)
        blocks += [("h3", names[c]), ("img", f"{names[c]} over the ratio", figure),
                   ("table", header, body, f"curve-c{c}")]
    if models:
        blocks += [("h2", "Long-tailed models"),
                   ("p", "Per-class accuracy against the images each class trained on, with Spearman's rank "
                         "correlation between the two over the classes (95% interval by Fisher's z), the worst "
                         "class and the balanced accuracy (the mean of the per-class accuracies).")]
        for lt in (m for m in models if m.eps == eps):
            figure = sweep_figures.longtail_figure(results, lt, folder / f"longtail-r{lt.ratio:g}.png")
            blocks += _longtail_blocks(results, lt, figure)
    if remedies:
        write_remedies_csv(remedies, folder / "remedies.csv")
        figure = remedies_figure(remedies, eps, folder / "remedies.png")
        blocks += [("h2", "Remedies"),
                   ("p", "Each profile under each remedy for imbalance: the rare classes' (the cut ones') accuracy, "
                         "clean and after each attack, its gain over plain cross-entropy paired by seed, the "
                         "mean and worst attacked class (a strong attack on a class model reads class c alone), "
                         "and the other classes' clean accuracy with its change from plain cross-entropy (what "
                         f"the remedy costs them). Fake gain: a PGD gain that AutoAttack takes back by more "
                         f"than {100 * FAKE_GAIN:g} points. remedies.csv holds every eps."),
                   ("img", "the rare classes under each remedy", figure),
                   ("table", *remedies_table(remedies, eps), "remedies")]
    blocks += [("h2", "Files"), ("p", "curve.csv: every point of the curves; summary.csv: the table above, at "
                                      "every eps and box; longtail.csv: the long-tail statistics; "
                                      "longtail-r<R>.csv: each long-tailed model per class; results.json: the "
                                      "evaluations behind it all.")]
    title = f"imbadv sweep report: {results.dataset}, {results.preset}"
    warning = (f"Plumbing check only: preset `{results.preset}` trains tiny models for seconds; its numbers say "
               "nothing about imbalance." if is_plumbing(results) else "")
    (folder / "report.md").write_text(_markdown(title, warning, blocks))
    (folder / "report.html").write_text(_html(title, warning, blocks))
    return {p.name: p for p in folder.iterdir()}


def _markdown(title: str, warning: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""] + ([f"> **{warning}**", ""] if warning else [])
    for kind, *rest in blocks:
        if kind in ("h2", "h3"):
            lines.append(f"{'#' * int(kind[1])} {rest[0]}")
        elif kind == "p":
            lines.append(rest[0])
        elif kind == "table":
            lines.append(_markdown_table(rest[0], rest[1]))
        else:
            lines.append(f"![{rest[0]}]({rest[1].name})")
        lines.append("")
    return "\n".join(lines)


def _html(title: str, warning: str, blocks: list[Block]) -> str:
    """One page, figures embedded; `data-images-loaded` on the body once they have decoded."""
    parts = [f"<h1>{html.escape(title)}</h1>"] + ([f'<p id="plumbing">{html.escape(warning)}</p>'] if warning else [])
    for kind, *rest in blocks:
        if kind in ("h2", "h3", "p"):
            parts.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "table":
            parts.append(_html_table(rest[0], rest[1], rest[2]))
        else:
            image = base64.b64encode(rest[1].read_bytes()).decode()
            parts.append(f'<figure><img alt="{html.escape(rest[0])}" src="data:image/png;base64,{image}">'
                         f"<figcaption>{html.escape(rest[0])}</figcaption></figure>")
    script = ("window.addEventListener('load',()=>{const i=[...document.images];"
              "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
              "document.body.dataset.imagesTotal=i.length;});")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             ".scroll{overflow-x:auto;max-width:100%;margin:1em 0}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
             "#plumbing{border:2px solid #c00;background:#fee;padding:.6em 1em;font-weight:bold}"
             "img{max-width:100%}figure{margin:1.5em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style><script>{script}</script></head><body>{''.join(parts)}</body></html>")


def check_report_options(attack_loss: str, images_per_class: int) -> None:
    if attack_loss not in ("logits", "keras"):
        raise ConfigError(f"unknown attack loss {attack_loss!r}: use logits or keras")
    if images_per_class < 0:
        raise ConfigError(f"images per class {images_per_class} is negative: pass 0 (all) or more")


def report_folder(output_dir: str, name: str, attack_loss: str, images_per_class: int) -> Path:
    """`<output_dir>/<name>`, `-keras-loss` and `-<N>-per-class` appended as for Table 1."""
    name += "" if attack_loss == "logits" else "-keras-loss"
    return Path(output_dir) / (name + (f"-{images_per_class}-per-class" if images_per_class else ""))


def run_sweep_report(preset: str, data: str, output_dir: str, attack_loss: str = "logits",
                     images_per_class: int = 0) -> Path:
    """Read a sweep's finished runs and write its report to `<output_dir>/<dataset>-<preset>-sweep/`
    (`-keras-loss`, `-<N>-per-class` appended as for Table 1), with the evaluations in `results.json`."""
    from imbadv.core.data import dataset_name
    from imbadv.tracking.results import load_results

    dataset = dataset_name(data)
    check_report_options(attack_loss, images_per_class)
    everything = load_results(dataset, preset, with_confusions=False, attack_loss=attack_loss,
                              images_per_class=images_per_class, paper_models=False)
    results = everything.plain_models()
    option = ("" if attack_loss == "logits" else f" --attack-loss {attack_loss}") + \
        (f" --images-per-class {images_per_class}" if images_per_class else "")
    if all(e.is_paper_model for e in everything.evaluations):
        raise ConfigError(f"no finished sweep evaluations (ratios other than the paper's, or long-tailed models) of "
                          f"{dataset} with preset {preset}{option} in this tracking store: run `imbadv sweep --preset "
                          f"{preset} --data {data}{option}` first")
    folder = report_folder(output_dir, f"{dataset}-{preset}-sweep", attack_loss, images_per_class)
    write_sweep_report(results, folder, registered_train_counts(results), remedy_rows(everything))
    write_results_file(everything, folder / RESULTS_FILE, attack_loss)
    print(f"sweep report written to {folder}/report.html")
    return folder
