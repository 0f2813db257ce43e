"""Write the study report: CSV, Markdown, figures and one self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path

from imbadv.config import ConfigError
from imbadv.report import cells, figures
from imbadv.report.analysis import (COLUMNS, PAPER_BALANCED_CLEAN_ACCURACY, SHARE, TABLE1_EPS, Estimate, cell_values,
                                    claims, class_scope, column_means, is_plumbing, paper_column_means, study_scope,
                                    table1, with_results)
from imbadv.report.saved import RESULTS_FILE, read_results_files, write_results_file
from imbadv.tracking import log
from imbadv.tracking.names import CLEAN_ACC, REL_DROP, SUCCESS_RATE
from imbadv.report.audit import audit_rows, audit_summary, write_audit
from imbadv.tracking.results import PAPER_ATTACK, StudyResults

# (column, sampling, source, metric): the measures beyond the paper, from the one table of cells.
BEYOND = tuple((column, cell.sampling, cell.source, metric) for column, cell, metric in cells.BEYOND)
# The range each measure can take, to which its interval is cut: a relative drop is at most 1 (an
# attack that leaves nothing right) and below 0 where the attack raised the accuracy.
BEYOND_BOUNDS = {CLEAN_ACC: SHARE, SUCCESS_RATE: SHARE, REL_DROP: (-math.inf, 1.0)}


def _pct(value: float, sign: str = "") -> str:
    return f"{value * 100:{sign}.1f}" if value == value else "-"


def _table1_markdown(results: StudyResults, eps: float) -> tuple[list[list[str]], list[list[str]]]:
    """Each cell: our accuracy, the attacked model's clean accuracy on the class in brackets (the
    ceiling of the cell), then the paper's accuracy (the paper gives no per-class clean accuracy)."""
    rows, clean = table1(results, eps), table1(results, eps, metric=CLEAN_ACC)
    header = ["class"] + [f"{c} ours (clean) / paper" for c, _, _ in COLUMNS]
    body = [[str(r["class_name"])] + [f"{r[c].text()} ({_pct(k[c].mean)}) / {_pct(r['paper_' + c])}"
                                      for c, _, _ in COLUMNS] for r, k in zip(rows, clean, strict=True)]
    means, clean_means = column_means(rows, len(results.seeds)), column_means(clean, len(results.seeds))
    paper = paper_column_means(rows)  # over the same classes as ours, column by column
    body.append(["**mean**"] + [f"**{means[c].text()} ({_pct(clean_means[c].mean)}) / {_pct(paper[c])}**"
                                for c, _, _ in COLUMNS])
    body.append(["difference (ours - paper)"] + [_pct(means[c].mean - paper[c], "+") for c, _, _ in COLUMNS])
    return [header], body


def balanced_clean_accuracy(results: StudyResults, eps: float = TABLE1_EPS) -> Estimate:
    """The balanced model's clean accuracy on the whole test set, across seeds."""
    values = [e.metrics.get(CLEAN_ACC, float("nan")) for seed in results.seeds
              if (e := results.find(seed, eps, "balanced", None, "self")) is not None]
    return Estimate(tuple(values), SHARE)


def _means_note(results: StudyResults, eps: float) -> str:
    """Which classes each column's mean covers, when some column lacks some classes ('' otherwise)."""
    rows = table1(results, eps)
    covered = {c: with_results(rows, c) for c, _, _ in COLUMNS}
    if all(len(ids) == len(results.class_names) for ids in covered.values()):
        return ""
    paper = paper_column_means()
    return ("Each column's mean, ours and the paper's alike, is over the classes with results in that column: "
            + "; ".join(f"{c}: {class_scope(results.class_names, ids)}" for c, ids in covered.items())
            + ". The paper's means over all its ten classes are "
            + ", ".join(f"{c} {_pct(paper[c])}" for c, _, _ in COLUMNS) + ".")


def _plumbing_warning(results: StudyResults) -> str:
    if not is_plumbing(results):
        return ""
    return (f"Plumbing check only: preset `{results.preset}` trains tiny models on a few hundred images for "
            "seconds. Its numbers say nothing about the paper, and its claims get no verdict.")


def _beyond_rows(results: StudyResults, eps: float) -> tuple[list[str], list[list[str]]]:
    header = ["class"] + [c for c, _, _, _ in BEYOND]
    body = [[name] + [Estimate(cell_values(results, eps, s, src, k, m), BEYOND_BOUNDS[m]).text()
                      for _, s, src, m in BEYOND]
            for k, name in enumerate(results.class_names)]
    return header, body


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _write_csvs(results: StudyResults, eps: float, folder: Path) -> None:
    rows = table1(results, eps)
    with open(folder / "table1.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["class_id", "class_name"]
        for column, _, _ in COLUMNS:
            header += [f"{column}_ours", f"{column}_ours_ci_low", f"{column}_ours_ci_high", f"{column}_paper",
                       f"{column}_diff", f"{column}_clean"]
        writer.writerow(header)
        clean = table1(results, eps, metric=CLEAN_ACC)
        for r, k in zip(rows, clean, strict=True):
            line = [r["class_id"], r["class_name"]]
            for column, _, _ in COLUMNS:
                estimate, paper = r[column], r[f"paper_{column}"]
                line += [estimate.mean, *estimate.interval, paper, estimate.mean - paper, k[column].mean]
            writer.writerow(line)
        # Each column's mean over the classes with results in it, and the paper's over the same classes.
        means, paper_means = column_means(rows, len(results.seeds)), paper_column_means(rows)
        clean_means = column_means(clean, len(results.seeds))
        line = ["", "mean"]
        for column, _, _ in COLUMNS:
            line += [means[column].mean, *means[column].interval, paper_means[column],
                     means[column].mean - paper_means[column], clean_means[column].mean]
        writer.writerow(line)
    with open(folder / "claims.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["claim", "paper", "ours", "verdict"])
        for claim in claims(results, eps):
            writer.writerow([claim.claim, claim.paper, claim.ours, claim.verdict])
    header, body = _beyond_rows(results, eps)
    with open(folder / "beyond.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *body])


ATTACK_TITLES = {"fgsm": "FGSM", "ifgsm": "iterative FGSM", "mifgsm": "MI-FGSM", "pgd": "PGD",
                 "autoattack": "AutoAttack"}


def write_report(results: StudyResults, folder: Path, eps: float = TABLE1_EPS) -> dict[str, Path]:
    """Write every report file into `folder`, the paper's FGSM (else the first attack with results) at
    the top and each other attack's report in `attacks/<attack>/`, with `attack_audit.csv` when FGSM
    and a stronger attack both ran; returns the top folder's files by name. Only the paper's 21 models
    are reported (a sweep's other profiles and ratios: `imbadv.report.sweep`)."""
    results = results.paper_models()
    attacks = results.attacks
    main = PAPER_ATTACK if PAPER_ATTACK in attacks else attacks[0]
    audit = audit_rows(results, eps)
    folder.mkdir(parents=True, exist_ok=True)
    if audit:
        write_audit(audit, folder / "attack_audit.csv")
    others = [a for a in attacks if a != main]
    extra = []
    if others:
        links = ", ".join(f"[{ATTACK_TITLES.get(a, a)}](attacks/{a}/report.md)" for a in others)
        text = f"The same report under each other attack the study ran: {links}."
        if audit:
            text += (f"\n\n`attack_audit.csv` sets each cell's accuracy under FGSM beside the others'. "
                     f"{audit_summary(audit)}")
        extra.append(("Stronger attacks", text))
    for attack in others:
        _write_attack_report(results.of_attack(attack), folder / "attacks" / attack, eps, attack)
    return _write_attack_report(results.of_attack(main), folder, eps, main, extra)


def _attack_text(results: StudyResults, attack: str) -> str:
    """`FGSM ascent` or the attack with its settings, e.g. `PGD ascent (steps=20 step_size=0.0025 ...)`."""
    settings = sorted({e.attack_params for e in results.evaluations if e.attack_params})
    return f"{ATTACK_TITLES.get(attack, attack)} ascent" + (f" ({'; '.join(settings)})" if settings else "")


def _write_attack_report(results: StudyResults, folder: Path, eps: float, attack: str,
                         extra_sections: list[tuple[str, str]] | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    _write_csvs(results, eps, folder)
    images = {"Figure 3: clean accuracy": figures.clean_accuracy(results, folder / "fig3_clean_accuracy.png", eps),
              "Figure 5: relative drop": figures.relative_drop(results, folder / "fig5_relative_drop.png", eps),
              "Figure 7: similar-class confusions": figures.confusions(results, folder / "fig7_confusions.png", eps)}
    if len(results.eps_values) > 1:
        images["Robustness curves"] = figures.robustness_curves(results, folder / "robustness_curves.png")

    header, body = _table1_markdown(results, eps)
    beyond_header, beyond_body = _beyond_rows(results, eps)
    claim_rows = [[c.claim, c.paper, c.ours, c.verdict] for c in claims(results, eps)]
    seeds = len(results.seeds)
    warning = _plumbing_warning(results)
    note = _means_note(results, eps)
    intro = (f"Covers {study_scope(results)}. Dataset `{results.dataset}`, preset `{results.preset}`, "
             f"{_attack_text(results, attack)} at eps = {eps:g} with the true label. Cells: accuracy (%) on the test "
             "images of the target class"
             + (", mean [95% CI] over seeds" if seeds > 1 else "") + "; in brackets the attacked model's clean "
             "accuracy on that class, which no attack can raise, so a low clean accuracy caps a cell. The balanced "
             f"model's clean accuracy on all classes: {balanced_clean_accuracy(results, eps).text()}% (the paper's: "
             f"about {PAPER_BALANCED_CLEAN_ACCURACY:.0%}).")
    table1_text = _markdown_table(header[0], body) + (f"\n\n{note}" if note else "")
    sections = [
        ("Table 1: ours / the paper's", table1_text),
        ("Claims", _markdown_table(["claim", "paper", "ours", "verdict"], claim_rows)),
        ("Beyond the paper: attack success among correctly classified images, relative drop",
         "An under-sampled model already classifies its class worse before any attack. The attack success "
         "rate counts only images the model got right before the attack, so it, not the accuracy, says how "
         "well an attack transfers; the relative drop is (clean - adversarial) / clean.\n\n"
         + _markdown_table(beyond_header, beyond_body)),
        *(extra_sections or []),
    ]
    title = f"{results.dataset}, {results.preset}"
    if attack != PAPER_ATTACK:
        title += f", {ATTACK_TITLES.get(attack, attack)}"
    markdown = [f"# imbadv study report: {title}", ""]
    if warning:
        markdown += [f"> **{warning}**", ""]
    markdown += [intro, ""]
    for title, text in sections:
        markdown += [f"## {title}", "", text, ""]
    for title, path in images.items():
        markdown += [f"## {title}", "", f"![{title}]({path.name})", ""]
    (folder / "table1.md").write_text(table1_text + "\n")
    (folder / "report.md").write_text("\n".join(markdown))
    (folder / "report.html").write_text(_html(title, warning, intro, note, header[0], body, claim_rows,
                                              beyond_header, beyond_body, images, extra_sections or []))
    if warning:
        print(warning)
    print(f"Table 1 ({title}, {study_scope(results)}; ours / paper, %)")
    print(table1_text.replace("**", ""))
    return {p.name: p for p in folder.iterdir()}


def _html_table(header: list[str], body: list[list[str]], table_id: str) -> str:
    """A table in a box that scrolls sideways when it is wider than the page; long column names may
    break after their underscores."""
    head = "".join(f"<th>{html.escape(h).replace('_', '_<wbr>')}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell.replace('**', ''))}</td>" for cell in row) + "</tr>"
                   for row in body)
    table = f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _html(title: str, warning: str, intro: str, note: str, header, body, claim_rows, beyond_header,
          beyond_body, images: dict[str, Path], extra_sections: list[tuple[str, str]]) -> str:
    figures_html = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(title)}</figcaption></figure>'
        for title, path in images.items())
    # Marks the page once every image has decoded, so a headless browser can check it.
    script = ("window.addEventListener('load',()=>{const i=[...document.images];"
              "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
              "document.body.dataset.imagesTotal=i.length;});")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             ".scroll{overflow-x:auto;max-width:100%;margin:1em 0}"
             "table{border-collapse:collapse;font-size:13px}#beyond{font-size:11px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,#claims td{text-align:left}"
             "#plumbing{border:2px solid #c00;background:#fee;padding:.6em 1em;font-weight:bold}"
             "img{max-width:100%}figure{margin:1.5em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>imbadv report: {html.escape(title)}"
            f"</title><style>{style}</style><script>{script}</script></head><body>"
            f"<h1>imbadv study report: {html.escape(title)}</h1>"
            + (f'<p id="plumbing">{html.escape(warning)}</p>' if warning else "")
            + f"<p>{html.escape(intro)}</p><h2>Table 1: ours / the paper's</h2>{_html_table(header, body, 'table1')}"
            + (f'<p id="means-note">{html.escape(note)}</p>' if note else "")
            + f"<h2>Claims</h2>{_html_table(['claim', 'paper', 'ours', 'verdict'], claim_rows, 'claims')}"
            f"<h2>Beyond the paper</h2>{_html_table(beyond_header, beyond_body, 'beyond')}"
            + "".join(f"<h2>{html.escape(t)}</h2><p>{html.escape(text)}</p>" for t, text in extra_sections)
            + f"{figures_html}</body></html>")


def attach_to_study(results: StudyResults, folder: Path) -> None:
    """Log the report as artifacts of the study's parent run, when there is one."""
    if results.study_run_id:
        log.artifacts(folder, "report", run_id=results.study_run_id)


def run_report(preset: str, data: str, output_dir: str, attack_loss: str = "logits",
               images_per_class: int = 0) -> Path:
    """Read the finished runs of a study and write its report to `<output_dir>/<dataset>-<preset>/`
    (`...-keras-loss/` for the evaluations made with Keras' loss, `...-<N>-per-class/` for those that
    attacked the first N test images of each class), with the results behind it in `results.json`."""
    from imbadv.core.data import dataset_name
    from imbadv.tracking.results import load_results

    dataset = dataset_name(data)
    if attack_loss not in ("logits", "keras"):
        raise ConfigError(f"unknown attack loss {attack_loss!r}: use logits or keras")
    if images_per_class < 0:
        raise ConfigError(f"images per class {images_per_class} is negative: pass 0 (all) or more")
    results = load_results(dataset, preset, attack_loss=attack_loss, images_per_class=images_per_class)
    option = ("" if attack_loss == "logits" else f" --attack-loss {attack_loss}") + \
        (f" --images-per-class {images_per_class}" if images_per_class else "")
    if not results.evaluations:
        raise ConfigError(f"no finished evaluations of {dataset} with preset {preset}{option} in this tracking "
                          f"store: run `imbadv reproduce --preset {preset} --data {data}{option}` first")
    folder = _write(results, output_dir, attack_loss)
    attach_to_study(results, folder)
    return folder


def run_report_from_files(paths: list[str], output_dir: str) -> Path:
    """Write the report of the results files at `paths` (`imbadv.report.saved`), their seeds combined."""
    results, attack_loss = read_results_files(paths)
    if not results.evaluations:
        raise ConfigError(f"{', '.join(map(str, paths))} hold no evaluations: report a study with results")
    return _write(results, output_dir, attack_loss)


def _write(results: StudyResults, output_dir: str, attack_loss: str) -> Path:
    name = f"{results.dataset}-{results.preset}" + ("" if attack_loss == "logits" else "-keras-loss")
    folder = Path(output_dir) / (name + (f"-{results.images_per_class}-per-class" if results.images_per_class else ""))
    write_report(results, folder)
    write_results_file(results, folder / RESULTS_FILE, attack_loss)
    print(f"report written to {folder}/report.html")
    return folder
