"""A study's results as one JSON file: the data behind its report, readable without the tracking store.

`imbadv report` writes `results.json` beside the report. `imbadv report --results A --results B`
writes the report from such files instead of a store, so seeds run in separate stores (machines
without a shared tracking server, or a study split with `reproduce --first-seed`) give one Table 1
with intervals over all of them. A file holds every evaluation's identity, metrics and confusion
matrices; no pickled objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from imbadv.config import PAPER_RATIO, RATIO_SAMPLINGS, ConfigError, model_label
from imbadv.tracking.results import PAPER_ATTACK, Evaluation, StudyResults, check_one_version_per_model

FORMAT = "imbadv-study-results/1"
RESULTS_FILE = "results.json"  # in every report folder
# What every combined file must agree on: results of other data, models or attacks are not one study.
IDENTITY = ("dataset", "preset", "attack_loss", "class_names")
SUBSET = "images_per_class"  # also identity; absent from files written before it, which attacked every image


class ResultsFileError(ConfigError):
    """A results file that cannot be read, or files that do not make one study."""


def to_json(results: StudyResults, attack_loss: str = "logits") -> dict[str, Any]:
    return {"format": FORMAT, "dataset": results.dataset, "preset": results.preset, "attack_loss": attack_loss,
            "class_names": list(results.class_names), "study_run_id": results.study_run_id,
            SUBSET: results.images_per_class,
            "evaluations": [_evaluation_json(e) for e in sorted(results.evaluations, key=_order)]}


def write_results_file(results: StudyResults, path: Path, attack_loss: str = "logits") -> Path:
    """Write `results` to `path` (JSON)."""
    path.write_text(json.dumps(to_json(results, attack_loss), indent=1, sort_keys=True) + "\n")
    return path


def read_results_files(paths: list[str] | list[Path]) -> tuple[StudyResults, str]:
    """One study's results from the files at `paths` and their attack loss, each cell from exactly one file."""
    if not paths:
        raise ResultsFileError("no results file given: pass --results <report folder>/results.json")
    loaded = [(Path(p), _read(Path(p))) for p in paths]
    first_path, first = loaded[0]
    for path, values in loaded[1:]:
        for key in (*IDENTITY, SUBSET):
            if values.get(key, 0) != first.get(key, 0):
                raise ResultsFileError(f"{path} holds {key} {values.get(key, 0)!r} but {first_path} holds "
                                       f"{first.get(key, 0)!r}: "
                                       "combine only results of one study's settings")
    evaluations: list[Evaluation] = []
    origin: dict[tuple, Path] = {}
    for path, values in loaded:
        for item in values["evaluations"]:
            evaluation = _evaluation(item, path)
            if evaluation.identity in origin:
                model = model_label(evaluation.sampling, evaluation.class_id, evaluation.ratio, evaluation.loss,
                                    evaluation.resample)
                model += f"-posthoc{evaluation.posthoc_tau:g}" if evaluation.posthoc_tau else ""
                raise ResultsFileError(f"seed {evaluation.seed}'s {model} "
                                       f"{evaluation.source} {evaluation.attack} evaluation at eps {evaluation.eps:g} "
                                       f"is in both {origin[evaluation.identity]} and {path}: combine files of "
                                       "different seeds")
            origin[evaluation.identity] = path
            evaluations.append(evaluation)
    check_one_version_per_model(evaluations)  # per seed, so models of separate stores never meet
    study_run_id = first["study_run_id"] if len(loaded) == 1 else None
    results = StudyResults(first["dataset"], first["preset"], tuple(first["class_names"]), evaluations, study_run_id,
                           int(first.get(SUBSET, 0)))
    return results, first["attack_loss"]


def _order(evaluation: Evaluation) -> tuple:
    """A sort key of `Evaluation.cell`: the balanced model's cells (class None) first."""
    attack, seed, eps, sampling, class_id, source, ratio, loss, resample, posthoc_tau = evaluation.identity
    return (attack, seed, eps, sampling, -1 if class_id is None else class_id, source, ratio or 0.0, loss, resample,
            posthoc_tau)


def _evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    return {"run_id": evaluation.run_id, "seed": evaluation.seed, "eps": evaluation.eps,
            "sampling": evaluation.sampling, "class_id": evaluation.class_id, "source": evaluation.source,
            "target_version": evaluation.target_version, "source_version": evaluation.source_version,
            "attack": evaluation.attack, "attack_params": evaluation.attack_params, "ratio": evaluation.ratio,
            "loss": evaluation.loss, "resample": evaluation.resample, "posthoc_tau": evaluation.posthoc_tau,
            "metrics": evaluation.metrics,
            "confusion": {kind: matrix.astype(int).tolist() for kind, matrix in evaluation.confusion.items()}}


def _read(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsFileError(f"no results file at {path}: pass the results.json of a report folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFileError(f"{path} is not a results file ({error}): pass the results.json that "
                               "`imbadv report` wrote") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        found = values.get("format") if isinstance(values, dict) else None
        raise ResultsFileError(f"{path} is not an {FORMAT} file (format {found!r}): pass the results.json that "
                               "`imbadv report` wrote")
    missing = [key for key in (*IDENTITY, "evaluations", "study_run_id") if key not in values]
    if missing:
        raise ResultsFileError(f"{path} lacks {', '.join(missing)}: write it again with `imbadv report`")
    return values


def _ratio(item: dict[str, Any]) -> float | None:
    """The target's ratio; files written before ratios hold the paper's models only."""
    if str(item["sampling"]) not in RATIO_SAMPLINGS:
        return None
    return PAPER_RATIO if item.get("ratio") is None else float(item["ratio"])


def _evaluation(item: dict[str, Any], path: Path) -> Evaluation:
    try:
        return Evaluation(run_id=str(item["run_id"]), seed=int(item["seed"]), eps=float(item["eps"]),
                          sampling=str(item["sampling"]),
                          class_id=None if item["class_id"] is None else int(item["class_id"]),
                          source=str(item["source"]),
                          metrics={str(k): float(v) for k, v in item["metrics"].items()},
                          confusion={str(k): np.asarray(v, dtype=np.int64) for k, v in item["confusion"].items()},
                          target_version=str(item.get("target_version", "")),
                          source_version=str(item.get("source_version", "")),
                          attack=str(item.get("attack", PAPER_ATTACK)),
                          attack_params=str(item.get("attack_params", "")),
                          ratio=_ratio(item), loss=str(item.get("loss", "ce")),
                          resample=str(item.get("resample", "none")),
                          posthoc_tau=float(item.get("posthoc_tau", 0.0)))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ResultsFileError(f"{path} holds an evaluation it cannot describe ({type(error).__name__}: {error}): "
                               "write it again with `imbadv report`") from None
