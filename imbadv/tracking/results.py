"""Finished study runs read back from the tracking store, as tidy records (nothing is recomputed).

One `Evaluation` per (attack, seed, eps, model, source): the evaluation run's per-class metrics, and
its clean and adversarial confusion matrices when asked for.
"""

from __future__ import annotations

import csv
import io
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from imbadv.config import CLASS_SAMPLINGS, PAPER_RATIO, RATIO_SAMPLINGS, AttackConfig
from imbadv.tracking import names

P = names.CONFIG_PARAM_PREFIX
PAPER_ATTACK = AttackConfig.attack  # section 3.2: FGSM
# The untargeted attacks a study's report reads, weakest first: one Table 1 each.
STUDY_ATTACKS = (PAPER_ATTACK, "ifgsm", "mifgsm", "pgd", "autoattack")


@dataclass(frozen=True)
class Evaluation:
    """One finished untargeted ascent evaluation of a study model (FGSM, the paper's, or a stronger attack)."""

    run_id: str
    seed: int
    eps: float
    sampling: str
    class_id: int | None
    source: str  # "self", "balanced" or "peer" (the target's model of another seed)
    metrics: dict[str, float]
    confusion: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    target_version: str = ""  # <name>/<version> of the attacked model
    source_version: str = ""  # <name>/<version> of the black-box source, "self" when white-box
    attack: str = PAPER_ATTACK
    attack_params: str = ""  # the attack's settings beyond eps, e.g. "steps=20 step_size=0.0025 restarts=1"
    ratio: float | None = None  # the target's imbalance ratio (under, over, longtail, step), None for balanced
    loss: str = "ce"  # the target's training loss: ce, or a remedy's (cb, la, bs)
    resample: str = "none"  # the target's resampling: none, or oversample
    posthoc_tau: float = 0.0  # the target's post-hoc logit adjustment (evaluate's --posthoc-tau), 0: none

    def __post_init__(self) -> None:
        if self.sampling in RATIO_SAMPLINGS and self.ratio is None:
            object.__setattr__(self, "ratio", PAPER_RATIO)  # evaluations before ratios: the paper's models

    @property
    def is_paper_model(self) -> bool:
        """Whether the target is one of the paper's 21 models: balanced, or under/over at ratio 5."""
        if not self.is_plain:
            return False
        return self.sampling == "balanced" or (self.sampling in CLASS_SAMPLINGS and self.ratio == PAPER_RATIO)

    @property
    def is_plain(self) -> bool:
        """Whether the target is free of every remedy for imbalance: trained with cross-entropy on its
        sampled set, and not adjusted post hoc."""
        return self.loss == "ce" and self.resample == "none" and not self.posthoc_tau

    @property
    def remedy(self) -> tuple[str, str, float]:
        """The target's remedy: (loss, resample, post-hoc tau); ("ce", "none", 0.0) for none."""
        return self.loss, self.resample, self.posthoc_tau

    def per_class(self, name: str, k: int) -> float:
        return self.metrics.get(names.per_class(name, k), float("nan"))

    @property
    def cell(self) -> tuple[int, float, str, int | None, str]:
        """The study cell this evaluation fills: (seed, eps, sampling, class_id, source)."""
        return (self.seed, self.eps, self.sampling, self.class_id, self.source)

    @property
    def key(self) -> tuple[str, int, float, str, int | None, str, float | None]:
        """The attack, the cell and the ratio: a plain (remedy-free) model's evaluation."""
        return (self.attack, *self.cell, self.ratio)

    @property
    def model(self) -> tuple[int, str, int | None, float | None, tuple[str, str, float]]:
        """The attacked model: (seed, sampling, class_id, ratio, remedy)."""
        return (self.seed, self.sampling, self.class_id, self.ratio, self.remedy)

    @property
    def identity(self) -> tuple[str, int, float, str, int | None, str, float | None, str, str, float]:
        """`key` and the target's remedy: what one study's (or sweep's) evaluations hold once."""
        return (*self.key, *self.remedy)


@dataclass(frozen=True)
class StudyResults:
    dataset: str
    preset: str
    class_names: tuple[str, ...]
    evaluations: list[Evaluation]
    study_run_id: str | None
    images_per_class: int = 0  # the evaluations attacked the first N test images of each class (0: all)

    @property
    def seeds(self) -> list[int]:
        return sorted({e.seed for e in self.evaluations})

    @property
    def eps_values(self) -> list[float]:
        return sorted({e.eps for e in self.evaluations})

    @property
    def attacks(self) -> list[str]:
        """The attacks with results, the paper's FGSM first, then in `STUDY_ATTACKS` order."""
        order = {name: i for i, name in enumerate(STUDY_ATTACKS)}
        return sorted({e.attack for e in self.evaluations}, key=lambda a: (order.get(a, len(order)), a))

    def paper_models(self) -> StudyResults:
        """These results with only the evaluations of the paper's 21 models: one Table 1's worth."""
        return dataclasses.replace(self, evaluations=[e for e in self.evaluations if e.is_paper_model])

    def plain_models(self) -> StudyResults:
        """These results without the models under a remedy for imbalance (`--losses`, `--resample`, `--posthoc`)."""
        return dataclasses.replace(self, evaluations=[e for e in self.evaluations if e.is_plain])

    def of_attack(self, attack: str) -> StudyResults:
        """These results with only `attack`'s evaluations: one Table 1's worth."""
        return dataclasses.replace(self, evaluations=[e for e in self.evaluations if e.attack == attack])

    def clean_by_model(self) -> dict[tuple, list[float]]:
        """Each model's clean accuracy on every class, by `Evaluation.model`: from any of its evaluations
        that read every class (a strong attack on a class model reads class c's images only), since clean
        accuracy is the model's whatever the attack and the source."""
        found: dict[tuple, list[float]] = {}
        for e in self.evaluations:
            values = [e.per_class(names.CLEAN_ACC, k) for k in range(len(self.class_names))]
            if all(np.isfinite(values)):
                found.setdefault(e.model, values)
        return found

    def find(self, seed: int, eps: float, sampling: str, class_id: int | None, source: str) -> Evaluation | None:
        for e in self.evaluations:
            if e.cell == (seed, eps, sampling, class_id, source):
                return e
        return None


def _evaluation(run: Run, attack_loss: str = "logits", images_per_class: int = 0) -> Evaluation | None:
    p = run.data.params
    source, attack = p.get(P + "source", ""), p.get(P + "attack", "")
    if source not in ("self", "balanced", "peer") or attack not in STUDY_ATTACKS or p.get(P + "direction") != "ascent" \
            or p.get(P + "target_label", "") != "" or p.get(P + "attack_loss", "logits") != attack_loss \
            or int(p.get(P + "images_per_class", "0")) != images_per_class:
        return None
    sampling = p[P + "sampling"]
    ratio = float(p.get(P + "ratio") or PAPER_RATIO) if sampling in RATIO_SAMPLINGS else None  # none before ratios
    return Evaluation(run_id=run.info.run_id, seed=int(p[P + "seed"]), eps=float(p[P + "eps"]), ratio=ratio,
                      loss=p.get(P + "loss", "ce"), resample=p.get(P + "resample", "none"),
                      posthoc_tau=float(p.get(P + "posthoc_tau") or 0.0),
                      sampling=sampling, class_id=int(p[P + "class_id"]) if p.get(P + "class_id") else None,
                      source=source, metrics=dict(run.data.metrics),
                      target_version=run.data.tags.get(names.TAG_TARGET, ""),
                      source_version=run.data.tags.get(names.TAG_SOURCE, ""), attack=attack,
                      attack_params=run.data.tags.get(names.TAG_ATTACK_PARAMS, ""))


def load_results(dataset: str, preset: str, with_confusions: bool = True, attack_loss: str = "logits",
                 images_per_class: int = 0, paper_models: bool = True) -> StudyResults:
    """The newest finished evaluation of each study cell for `dataset` and `preset`, made with `attack_loss`
    on the first `images_per_class` test images of each class (0: on all of them): evaluations of
    other images measure something else and are never mixed in. With `paper_models`, only those of the
    paper's 21 models (Table 1); else a sweep's too, every profile and ratio."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, max_results=50000, order_by=["attributes.start_time DESC"],
        filter_string=(f"attributes.status = 'FINISHED' and tags.`{names.TAG_JOB}` = 'evaluate' and "
                       f"tags.`{names.TAG_DATASET}` = '{dataset}' and params.`{P}preset` = '{preset}'"))
    newest: dict[tuple, Evaluation] = {}
    for run in runs:
        evaluation = _evaluation(run, attack_loss, images_per_class)
        if evaluation is None or (paper_models and not evaluation.is_paper_model):
            continue
        newest.setdefault(evaluation.identity, evaluation)  # runs come newest first
    evaluations = list(newest.values())
    check_one_version_per_model(evaluations)
    class_names: tuple[str, ...] = ()
    if evaluations:
        class_names = tuple(row["class_name"] for row in _csv_rows(evaluations[0].run_id, names.PER_CLASS_ARTIFACT))
    if with_confusions:
        evaluations = [_with_confusions(e) for e in evaluations]
    studies = client.search_runs(
        experiments, max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=(f"tags.`{names.TAG_JOB}` = 'study' and tags.`{names.TAG_DATASET}` = '{dataset}' and "
                       f"params.`{P}preset` = '{preset}'"))
    return StudyResults(dataset, preset, class_names, evaluations, studies[0].info.run_id if studies else None,
                        images_per_class)


class MixedVersions(RuntimeError):
    """A study's evaluations attack different versions of one model."""


def check_one_version_per_model(evaluations: list[Evaluation]) -> None:
    """Refuse results whose evaluations of one seed attack, or attack from, several versions of a model."""
    seen: dict[tuple[int, str], set[str]] = {}
    for e in evaluations:
        # a peer source is another seed's model: its seed's own evaluations check its version
        for model_version in (e.target_version, "" if e.source == "peer" else e.source_version):
            name, _, version = model_version.rpartition("/")
            if name:
                seen.setdefault((e.seed, name), set()).add(version)
    mixed = sorted((seed, name, sorted(versions, key=int)) for (seed, name), versions in seen.items()
                   if len(versions) > 1)
    if mixed:
        seed, name, versions = mixed[0]
        raise MixedVersions(f"the newest evaluations of seed {seed} attack versions {', '.join(versions)} of {name}: "
                            "rerun `imbadv reproduce` with the study's options to evaluate one version throughout")


def _csv_rows(run_id: str, path: str) -> list[dict[str, str]]:
    text = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def _with_confusions(evaluation: Evaluation) -> Evaluation:
    matrices = {}
    for kind in ("clean", "adversarial"):
        rows = _csv_rows(evaluation.run_id, f"{names.CONFUSION_DIR}/{kind}.csv")
        matrices[kind] = np.array([[int(v) for k, v in row.items() if k != "true\\predicted"] for row in rows])
    return Evaluation(**{**evaluation.__dict__, "confusion": matrices})
