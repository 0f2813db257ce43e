"""The order in which a study's steps run on its workers.

Trainings go first, longest first: balanced and under-sampled sets hold about 46,000-50,000 images,
over-sampled ones 14,000 (section 3.1: class c keeps 5,000, the other nine 1,000 each), so the short
trainings fill the workers at the end (a sweep's step and long-tail profiles go between). Each
evaluation runs as soon as the models it needs are trained (its target and, for a black-box attack,
the balanced source), so evaluations fill the workers that the last trainings leave idle, and a
failed training stops only the evaluations that need its model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from imbadv.config import PAPER_RATIO, RATIO_SAMPLINGS, model_label

if TYPE_CHECKING:
    from imbadv.study.plan import Step

_TRAINING_ORDER = {"balanced": 0, "natural": 0, "under": 1, "step": 2, "longtail": 3, "over": 4}  # largest first


class Model(NamedTuple):
    """One model of a study: its seed, training profile and remedy."""

    seed: int
    sampling: str
    class_id: int | None
    ratio: float | None  # the paper's where a profile takes one and the options name none
    loss: str = "ce"
    resample: str = "none"

    @property
    def label(self) -> str:
        return f"{model_label(self.sampling, self.class_id, self.ratio, self.loss, self.resample)} s{self.seed}"

    @property
    def group_kind(self) -> tuple[str, float | None, str, str]:
        """What trainings side by side share: equally many images, and one loss and resampling."""
        return self.sampling, self.ratio, self.loss, self.resample


def model_of(options: dict[str, Any]) -> Model:
    """The model a training makes, or an evaluation attacks."""
    sampling = options["sampling"]
    ratio = (options.get("ratio") or PAPER_RATIO) if sampling in RATIO_SAMPLINGS else None
    return Model(options["seed"], sampling, options.get("class_id"), ratio, options.get("loss", "ce"),
                 options.get("resample", "none"))


def balanced_model(seed: int) -> Model:
    """The plain balanced model of a seed: every black-box attack's source (section 3.2)."""
    return Model(seed, "balanced", None, None)


def source_model(options: dict[str, Any]) -> Model | None:
    """The model whose gradient crafts a black-box evaluation's attack: the seed's balanced model, or the
    target's peer (the same model of `source_seed`); None when white-box."""
    if options["source"] == "balanced":
        return balanced_model(options["seed"])
    if options["source"] == "peer":
        return model_of({**options, "seed": options["source_seed"]})
    return None


def models_needed(step: Step) -> set[Model]:
    """Models an evaluation needs trained: its target, and its black-box source."""
    options = dict(step.options)
    if step.entry != "evaluate":
        return set()
    return {model_of(options)} | ({source} if (source := source_model(options)) else set())


class Schedule:
    """Hands out the next step to run, given which trainings have finished or failed."""

    def __init__(self, todo: list[Step], trained: set[Model]) -> None:
        trainings = [s for s in todo if s.entry == "train"]
        trainings.sort(key=lambda s: _TRAINING_ORDER[dict(s.options)["sampling"]])  # stable: plan order within
        self._waiting = trainings + [s for s in todo if s.entry == "evaluate"]
        self._needs = {s.key: models_needed(s) for s in todo}
        self._trained = set(trained)
        self._training = {model_of(dict(s.options)) for s in trainings}  # waiting or running
        self._failed: dict[Model, str] = {}  # model -> label of its failed training

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def next_ready(self) -> Step | None:
        """The first waiting step whose models are trained, or None while none is."""
        for index, step in enumerate(self._waiting):
            if self._needs[step.key] <= self._trained:
                return self._waiting.pop(index)
        return None

    def ready(self) -> int:
        """How many waiting steps could start now."""
        return sum(self._needs[s.key] <= self._trained for s in self._waiting)

    def take_ready_like(self, step: Step) -> list[Step]:
        """The waiting evaluations of the same target model as `step` whose models are trained; they leave
        the schedule (a shared-engine worker runs them together)."""
        target = model_of(dict(step.options))
        taken = [s for s in self._waiting if s.entry == "evaluate" and model_of(dict(s.options)) == target
                 and self._needs[s.key] <= self._trained]
        self._waiting = [s for s in self._waiting if s not in taken]
        return taken

    def take_trainings_like(self, step: Step, limit: int) -> list[Step]:
        """Up to `limit` waiting trainings of the same sampling and ratio as `step` (equally many images, so
        they can train side by side); they leave the schedule."""
        kind = model_of(dict(step.options)).group_kind
        if kind[2:] != ("ce", "none"):
            return []  # a remedy trains alone (`imbadv.core.trainer.train`)
        taken = [s for s in self._waiting if s.entry == "train" and model_of(dict(s.options)).group_kind == kind]
        taken = taken[:limit]
        self._waiting = [s for s in self._waiting if s not in taken]
        return taken

    def finished(self, step: Step, succeeded: bool) -> None:
        if step.entry != "train":
            return
        model = model_of(dict(step.options))
        self._training.discard(model)
        if succeeded:
            self._trained.add(model)
        else:
            self._failed[model] = step.label

    def take_blocked(self) -> list[tuple[Step, str]]:
        """Waiting steps that can never run, each with the reason; they leave the schedule."""
        blocked, kept = [], []
        for step in self._waiting:
            lost = self._needs[step.key] - self._trained - self._training
            if lost:
                reasons = sorted(f"{self._failed[m]} failed" if m in self._failed else
                                 f"model {m.label} is not trained"
                                 for m in lost)
                blocked.append((step, "not run: " + "; ".join(reasons)))
            else:
                kept.append(step)
        self._waiting = kept
        return blocked
