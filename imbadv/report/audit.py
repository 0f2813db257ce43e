"""The attack audit: each Table 1 cell under FGSM (the paper's one step) beside the stronger attacks.

One-step robustness can be an artifact of the attack: a cell whose accuracy under FGSM stands more
than `FLAG_POINTS` above its accuracy under the strongest attack (the one leaving the lowest
accuracy), or whose success among correct images is that much lower, is flagged.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from imbadv.report.analysis import COLUMNS, TABLE1_EPS, table1
from imbadv.tracking.names import ADV_ACC, SUCCESS_RATE
from imbadv.tracking.results import PAPER_ATTACK, StudyResults

FLAG_POINTS = 0.05  # 5 percentage points


def audit_rows(results: StudyResults, eps: float = TABLE1_EPS) -> list[dict[str, object]]:
    """One row per (class, Table 1 column) with a result under FGSM and another attack: each attack's
    accuracy and success among correct (means over seeds), the gaps and their flags."""
    attacks = results.attacks
    if PAPER_ATTACK not in attacks or len(attacks) < 2:
        return []
    tables = {(attack, metric): table1(results.of_attack(attack), eps, metric)
              for attack in attacks for metric in (ADV_ACC, SUCCESS_RATE)}
    rows = []
    for class_id, name in enumerate(results.class_names):
        for column, _, _ in COLUMNS:
            accuracy = {a: tables[a, ADV_ACC][class_id][column].mean for a in attacks}
            success = {a: tables[a, SUCCESS_RATE][class_id][column].mean for a in attacks}
            stronger = [a for a in attacks if a != PAPER_ATTACK and math.isfinite(accuracy[a])]
            if not math.isfinite(accuracy[PAPER_ATTACK]) or not stronger:
                continue
            strongest = min(stronger, key=lambda a: accuracy[a])
            accuracy_gap = accuracy[PAPER_ATTACK] - accuracy[strongest]
            success_gap = success[strongest] - success[PAPER_ATTACK]
            rows.append({"class_id": class_id, "class_name": name, "column": column,
                         **{f"acc_{a}": accuracy[a] for a in attacks},
                         "strongest": strongest, "acc_gap": accuracy_gap, "acc_flag": accuracy_gap > FLAG_POINTS,
                         **{f"success_{a}": success[a] for a in attacks},
                         "success_gap": success_gap,
                         "success_flag": math.isfinite(success_gap) and success_gap > FLAG_POINTS})
    return rows


def write_audit(rows: list[dict[str, object]], path: Path) -> None:
    """`attack_audit.csv`: the rows of `audit_rows`, the union of their columns."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, restval="")
        writer.writeheader()
        writer.writerows(rows)


def audit_summary(rows: list[dict[str, object]]) -> str:
    """One paragraph: how many cells each flag marks, per Table 1 column."""
    if not rows:
        return ""
    by_column = {column: [r for r in rows if r["column"] == column] for column, _, _ in COLUMNS}
    parts = [f"{column} {sum(bool(r['acc_flag']) for r in group)} of {len(group)}"
             for column, group in by_column.items() if group]
    flagged = sum(bool(r["acc_flag"]) for r in rows)
    return (f"{flagged} of {len(rows)} cells keep more than {FLAG_POINTS * 100:g} points more accuracy under FGSM than "
            f"under the strongest attack run on them ({'; '.join(parts)}); "
            f"{sum(bool(r['success_flag']) for r in rows)} show an attack success among correct images that "
            f"much lower under FGSM.")
