"""The study's step order: trainings longest first, each evaluation once its models are trained."""

from __future__ import annotations

from imbadv.study.schedule import Model, Schedule, model_of, models_needed
from imbadv.study.config import StudyConfig
from imbadv.study.plan import plan
from imbadv.tracking.provenance import CODE_PARTS


def _plan(classes: str = "3,5"):
    return plan(StudyConfig(preset="smoke", classes=classes), 10, "digest", dict.fromkeys(CODE_PARTS, "commit"))


def _take_all_ready(schedule: Schedule) -> list:
    taken = []
    while (step := schedule.next_ready()) is not None:
        taken.append(step)
    return taken


def test_an_evaluation_needs_its_target_and_for_a_black_box_attack_the_balanced_model():
    evaluations = {(dict(s.options)["sampling"], dict(s.options)["class_id"], dict(s.options)["source"]): s
                   for s in _plan() if s.entry == "evaluate"}
    assert models_needed(evaluations[("under", 3, "self")]) == {Model(0, "under", 3, 5.0)}
    assert models_needed(evaluations[("over", 5, "balanced")]) == {Model(0, "over", 5, 5.0),
                                                                   Model(0, "balanced", None, None)}
    assert models_needed(evaluations[("balanced", None, "self")]) == {Model(0, "balanced", None, None)}
    assert all(not models_needed(s) for s in _plan() if s.entry == "train")


def test_trainings_come_first_largest_training_sets_first_and_evaluations_wait_for_their_models():
    schedule = Schedule(_plan(), trained=set())
    trainings = _take_all_ready(schedule)
    assert [dict(s.options)["sampling"] for s in trainings] == ["balanced", "under", "under", "over", "over"]
    assert schedule.waiting == 9  # every evaluation waits: no model is trained yet

    under3 = next(s for s in trainings if model_of(dict(s.options)) == Model(0, "under", 3, 5.0))
    schedule.finished(under3, succeeded=True)
    ready = _take_all_ready(schedule)
    assert [dict(s.options)["source"] for s in ready] == ["self"]  # under-c3 white-box; black-box needs balanced
    assert model_of(dict(ready[0].options)) == Model(0, "under", 3, 5.0)

    schedule.finished(trainings[0], succeeded=True)  # balanced
    ready = _take_all_ready(schedule)
    assert {(model_of(dict(s.options)), dict(s.options)["source"]) for s in ready} == {
        (Model(0, "balanced", None, None), "self"), (Model(0, "under", 3, 5.0), "balanced")}
    assert schedule.take_blocked() == []  # the other models are still training


def test_a_failed_training_blocks_only_the_evaluations_that_need_its_model():
    schedule = Schedule(_plan(), trained=set())
    trainings = {model_of(dict(s.options)): s for s in _take_all_ready(schedule)}
    schedule.finished(trainings[Model(0, "balanced", None, None)], succeeded=False)
    blocked = schedule.take_blocked()
    assert len(blocked) == 5  # balanced white-box, and the four black-box attacks from it
    assert all("not run: train balanced s0 failed" in reason for _, reason in blocked)
    for model in (Model(0, sampling, c, 5.0) for c in (3, 5) for sampling in ("under", "over")):
        schedule.finished(trainings[model], succeeded=True)
    ready = _take_all_ready(schedule)
    assert len(ready) == 4 and {dict(s.options)["source"] for s in ready} == {"self"}
    assert schedule.waiting == 0 and schedule.take_blocked() == []


def test_models_finished_by_an_earlier_run_count_as_trained():
    steps = _plan("3")
    todo = [s for s in steps if not (s.entry == "train" and dict(s.options)["sampling"] != "over")]
    schedule = Schedule(todo, trained={Model(0, "balanced", None, None), Model(0, "under", 3, 5.0)})
    ready = _take_all_ready(schedule)
    assert [s.entry for s in ready] == ["train", "evaluate", "evaluate", "evaluate"]  # over-c3, then 3 evaluations
    assert schedule.waiting == 2  # over-c3's two evaluations
    schedule.finished(ready[0], succeeded=True)
    assert len(_take_all_ready(schedule)) == 2


def test_the_ready_evaluations_of_one_target_are_taken_together_and_leave_the_schedule():
    steps = plan(StudyConfig(preset="smoke", classes="3", eps="0.01,0.03"), 10, "d", dict.fromkeys(CODE_PARTS, "c"))
    schedule = Schedule(steps, trained=set())
    trainings = _take_all_ready(schedule)
    under3 = next(s for s in trainings if model_of(dict(s.options)) == Model(0, "under", 3, 5.0))
    schedule.finished(under3, succeeded=True)
    first = schedule.next_ready()
    together = schedule.take_ready_like(first)
    # white-box at both eps; the black-box ones wait for the balanced model
    assert [(dict(s.options)["eps"], dict(s.options)["source"]) for s in [first, *together]] == [
        (0.01, "self"), (0.03, "self")]
    balanced = next(s for s in trainings if dict(s.options)["sampling"] == "balanced")
    schedule.finished(balanced, succeeded=True)
    first = schedule.next_ready()  # the balanced model's white-box attack comes first in the plan
    assert model_of(dict(first.options)) == Model(0, "balanced", None, None)
    assert len(schedule.take_ready_like(first)) == 1  # its other eps
    first = schedule.next_ready()
    assert {(model_of(dict(s.options)), dict(s.options)["source"]) for s in [first, *schedule.take_ready_like(first)]} \
        == {(Model(0, "under", 3, 5.0), "balanced")}
    assert schedule.waiting == 4  # the over-c3 model's four evaluations: it is not trained yet
