"""The sweep's grid (`imbadv sweep`): each class at each ratio and long-tailed models, on the study's engine."""

from __future__ import annotations

from collections import Counter

import pytest

from imbadv.config import PAPER_RATIO, ConfigError
from imbadv.study.config import StudyConfig, SweepConfig
from imbadv.study.plan import plan
from imbadv.study.schedule import Schedule, model_of
from imbadv.tracking.provenance import CODE_PARTS

COMMIT = dict.fromkeys(CODE_PARTS, "commit")


def _trainings(steps) -> list[dict]:
    return [dict(s.options) for s in steps if s.entry == "train"]


def test_the_sweep_plans_each_class_at_each_ratio_and_each_long_tail_once_per_seed():
    config = SweepConfig(preset="smoke", classes="cat,automobile", ratios="1,2,5,20", longtail="10,100", seeds=2)
    steps = plan(config, 10, "d", COMMIT)
    trainings = _trainings(steps)
    # per seed: the balanced model (ratio 1), 2 classes x 3 ratios x under/over, 2 long-tailed
    assert len(trainings) == 2 * (1 + 2 * 3 * 2 + 2)
    assert Counter(model_of(t)[1] for t in trainings) == {"balanced": 2, "under": 12, "over": 12, "longtail": 4}
    assert {model_of(t)[3] for t in trainings if t["sampling"] == "under"} == {2.0, 5.0, 20.0}
    evaluations = [dict(s.options) for s in steps if s.entry == "evaluate"]
    assert len(evaluations) == 2 * (1 + 2 * (12 + 2))  # each non-balanced model white- and black-box
    longtail = [e for e in evaluations if e["sampling"] == "longtail"]
    assert all("attack_classes" not in e for e in longtail)  # every class is read
    assert len({s.key for s in steps}) == len(steps)


def test_a_sweeps_paper_ratio_steps_are_the_studys_own(tmp_path):
    study = plan(StudyConfig(preset="smoke", classes="3", attacks="fgsm,pgd"), 10, "d", COMMIT)
    sweep = plan(SweepConfig(preset="smoke", classes="3", attacks="fgsm,pgd"), 10, "d", COMMIT)
    assert {s.key for s in study} < {s.key for s in sweep}
    assert SweepConfig().ratio_values == (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    assert SweepConfig().longtail_values == (10.0, 100.0)
    assert StudyConfig().ratio_values == (PAPER_RATIO,) and StudyConfig().longtail_values == ()
    assert SweepConfig().kind == "sweep" and StudyConfig().kind == "study"


@pytest.mark.parametrize(("options", "message"), [
    ({"ratios": "0.5"}, "ratios '0.5' are not comma-separated ratios 1 or more"),
    ({"ratios": "2,x"}, "--ratios 1,5,20"), ({"longtail": "1"}, "ratios above 1")])
def test_bad_sweep_ratios_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        SweepConfig(**options)


def test_only_trainings_of_one_profile_and_ratio_train_side_by_side():
    steps = plan(SweepConfig(preset="smoke", classes="3,5", ratios="5,20", longtail=""), 10, "d", COMMIT)
    schedule = Schedule(steps, trained=set())
    first_under = next(s for s in steps if s.entry == "train" and dict(s.options)["sampling"] == "under")
    group = [first_under, *schedule.take_trainings_like(first_under, 10)]
    assert {model_of(dict(s.options)).group_kind for s in group} == {("under", 5.0, "ce", "none")}
    assert len(group) == 3  # classes 3 and 5 (the first is taken again), at ratio 5 only


def test_each_imbalanced_model_is_trained_under_each_remedy_and_the_balanced_one_plainly():
    config = SweepConfig(preset="smoke", classes="3", ratios="1,5", longtail="100", losses="ce,cb",
                         resample="none,oversample")
    trainings = [model_of(dict(s.options)) for s in plan(config, 10, "d", COMMIT) if s.entry == "train"]
    assert len(trainings) == 1 + (2 + 1) * 4  # the balanced model; under, over and long-tail under 4 remedies
    assert {(m.loss, m.resample) for m in trainings if m.sampling == "balanced"} == {("ce", "none")}
    assert Counter((m.loss, m.resample) for m in trainings if m.sampling != "balanced") == {
        ("ce", "none"): 3, ("cb", "none"): 3, ("ce", "oversample"): 3, ("cb", "oversample"): 3}
    plain = plan(SweepConfig(preset="smoke", classes="3", ratios="1,5", longtail="100"), 10, "d", COMMIT)
    assert {s.key for s in plain} < {s.key for s in plan(config, 10, "d", COMMIT)}  # plain models: the same steps


def test_a_remedy_trains_alone_even_where_groups_are_asked_for():
    steps = plan(SweepConfig(preset="smoke", classes="3,5", ratios="5", longtail="", losses="ce,la"), 10, "d",
                 COMMIT)
    schedule = Schedule(steps, trained=set())
    la = next(s for s in steps if s.entry == "train" and dict(s.options).get("loss") == "la")
    assert schedule.take_trainings_like(la, 10) == []
    plain = next(s for s in steps if s.entry == "train" and dict(s.options)["sampling"] == "under")
    assert all("loss" not in dict(s.options) for s in schedule.take_trainings_like(plain, 10))


@pytest.mark.parametrize(("options", "message"), [
    ({"losses": "ce,focal"}, "--losses 'ce,focal' is not a comma-separated list of ce, cb, la, bs"),
    ({"resample": "smote"}, "--resample 'smote'")])
def test_bad_remedy_grids_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        SweepConfig(**options)


def test_posthoc_attacks_each_cross_entropy_model_adjusted_and_trains_nothing_more():
    base = SweepConfig(preset="smoke", classes="3", ratios="1,5", longtail="100", losses="ce,cb",
                       attacks="fgsm,autoattack")
    adjusted = SweepConfig(**{**base.__dict__, "posthoc": "1,2"})
    before, after = plan(base, 10, "d", COMMIT), plan(adjusted, 10, "d", COMMIT)
    assert {s.key for s in before} < {s.key for s in after}
    assert _trainings(after) == _trainings(before)
    new = [dict(s.options) for s in after if s.key not in {b.key for b in before}]
    # under-c3, over-c3 and longtail-r100 with ce, two taus; FGSM white- and black-box, AutoAttack white-box
    assert len(new) == 3 * 2 * 3
    assert {(e.get("loss", "ce"), e["posthoc_tau"]) for e in new} == {("ce", 1.0), ("ce", 2.0)}
    assert {e["sampling"] for e in new} == {"under", "over", "longtail"}
    label = next(s.label for s in after if dict(s.options).get("posthoc_tau") == 2.0)
    assert "-posthoc2" in label
    assert "posthoc" not in base.identity and adjusted.identity["posthoc"] == "1,2"  # older studies keep their keys


@pytest.mark.parametrize("posthoc", ["0", "-1", "x", "inf"])
def test_bad_posthoc_taus_are_refused(posthoc):
    with pytest.raises(ConfigError, match="taus above 0"):
        SweepConfig(posthoc=posthoc)


def test_a_sweep_of_one_class_profile_trains_and_attacks_no_model_of_the_other():
    both = SweepConfig(preset="smoke", classes="3,1", ratios="1,5", longtail="100", losses="ce,cb", posthoc="1")
    under = SweepConfig(**{**both.__dict__, "samplings": "under"})
    steps = plan(under, 10, "d", COMMIT)
    assert {dict(s.options)["sampling"] for s in steps} == {"balanced", "under", "longtail"}
    # the same steps as the full sweep's under, balanced and long-tailed ones: finished runs are reused
    assert {s.key for s in steps} == {s.key for s in plan(both, 10, "d", COMMIT)
                                      if dict(s.options)["sampling"] != "over"}
    assert "samplings" not in both.identity and under.identity["samplings"] == "under"  # older sweeps keep their keys
    assert SweepConfig(samplings="over,under").sampling_values == ("over", "under")


@pytest.mark.parametrize("samplings", ["", "under,longtail", "balanced"])
def test_bad_samplings_are_refused(samplings):
    with pytest.raises(ConfigError, match=f"--samplings '{samplings}' is not a comma-separated list of under, over"):
        SweepConfig(samplings=samplings)
