"""The study's steps (paper section 4): 21 trainings per seed, and 41 attack evaluations per seed, eps
and attack (21 for an attack that is white-box only).

Each step is one entry-point call with its options, and a reuse key that hashes the entry point,
the options, the dataset digest and the version of the code that decides the step's result (a
training's weights, an evaluation's numbers: `imbadv.tracking.provenance.CODE_PARTS`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

from imbadv.config import CIFAR10_CLASSES, PAPER_RATIO, model_label
from imbadv.study.config import PAPER_ATTACK, WHITEBOX_ONLY_ATTACKS, StudyConfig


@dataclass(frozen=True)
class Step:
    """One entry-point call of the study and its reuse key."""

    entry: str  # "train" or "evaluate"
    options: tuple[tuple[str, Any], ...]
    key: str

    @property
    def label(self) -> str:
        o = dict(self.options)
        model = model_label(o["sampling"], o.get("class_id"), o.get("ratio"), o.get("loss", "ce"),
                            o.get("resample", "none"))
        model += f"-posthoc{o['posthoc_tau']:g}" if o.get("posthoc_tau") else ""
        if self.entry == "train":
            return f"train {model} s{o['seed']}"
        return f"evaluate {model} s{o['seed']} {o['attack']} source={o['source']} eps={o['eps']:g}"


def step_key(entry: str, options: dict[str, Any], dataset_digest: str, code_version: str) -> str:
    """32 hex digits naming one step: a finished run with the same key is reused."""
    payload = json.dumps({"entry": entry, "options": options, "dataset": dataset_digest, "code": code_version},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _ratio(value: float) -> dict[str, float]:
    """A model's ratio option: none at the paper's, so that a study's and a sweep's paper models are the same steps."""
    return {} if value == PAPER_RATIO else {"ratio": value}


def plan(config: StudyConfig, num_classes: int, dataset_digest: str, code_versions: Mapping[str, str],
         class_names: Sequence[str] = CIFAR10_CLASSES) -> list[Step]:
    """Trainings (balanced, and under c, over c (`samplings`) at each ratio, long-tailed at each of `longtail`, natural,
    each under each remedy of `losses` x `resample`, per seed), then evaluations (per attack, seed and eps,
    black-box from the balanced model or the peer of `black_box`; the
    cross-entropy models also adjusted post hoc with each tau of `posthoc`);
    `code_versions`: by entry point (train, evaluate), the version of the code that decides its steps'
    results; `class_names`: the dataset's, which `--classes` may name."""
    classes = config.class_ids(num_classes, class_names)
    base = {"preset": config.preset, "data": config.data}
    training = {**base, **config.training_overrides, **({"shared_init": True} if config.shared_init else {})}
    remedies = [{**({"loss": loss} if loss != "ce" else {}), **({"resample": res} if res != "none" else {})}
                for loss in config.loss_values for res in config.resample_values]
    class_models = [(sampling, c, {**_ratio(r), **remedy}) for c in classes for r in config.ratio_values if r != 1.0
                    for sampling in config.sampling_values for remedy in remedies]
    profiles = [("longtail", None, {"ratio": r, **remedy}) for r in config.longtail_values for remedy in remedies]
    if config.natural:
        profiles += [("natural", None, remedy) for remedy in remedies]
    # the imbalanced cross-entropy models, each also attacked adjusted post hoc with each tau
    adjusted = [(sampling, c, {**options, "posthoc_tau": tau}) for tau in config.posthoc_values
                for sampling, c, options in class_models + profiles if not options.keys() & {"loss", "resample"}]
    specs: list[tuple[str, dict[str, Any]]] = []
    for seed in config.seed_values:
        if config.trains_balanced:
            specs.append(("train", {**training, "seed": seed, "sampling": "balanced", "class_id": None}))
        for sampling, c, ratio in class_models + profiles:
            specs.append(("train", {**training, "seed": seed, "sampling": sampling, "class_id": c, **ratio}))
    subset = {"images_per_class": config.images_per_class} if config.images_per_class else {}
    for attack_name in config.attack_values:
        sources = ("self",) if attack_name in WHITEBOX_ONLY_ATTACKS else ("self", config.black_box)
        for seed in config.seed_values:
            source_options = {"self": {}, "balanced": {}, "peer": {"source_seed": config.peer_seed(seed)}}
            for eps in config.eps_values:
                attack = {**base, "seed": seed, **config.attack_options(attack_name, eps), **subset}
                if config.trains_balanced:
                    specs.append(("evaluate", {**attack, "sampling": "balanced", "class_id": None, "source": "self"}))
                for sampling, c, ratio in class_models + profiles + adjusted:
                    # the paper's FGSM attacks every test image; a stronger attack only class c's, all its cells read
                    own = {} if attack_name == PAPER_ATTACK or c is None else {"attack_classes": str(c)}
                    for source in sources:
                        specs.append(("evaluate", {**attack, "sampling": sampling, "class_id": c, "source": source,
                                                   **source_options[source], **ratio, **own}))
    return [Step(entry, tuple(sorted(options.items())), step_key(entry, options, dataset_digest, code_versions[entry]))
            for entry, options in specs]
