"""A naturally imbalanced dataset's study (`imbadv natural`): the natural profile under each remedy,
attacked white-box and from a peer model of another seed."""

from __future__ import annotations

from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from imbadv.config import ConfigError, EvaluateConfig
from imbadv.jobs.evaluate import run_evaluate
from imbadv.jobs.train import run_train
from imbadv.study.config import NaturalConfig, StudyConfig, SweepConfig
from imbadv.study.plan import plan
from imbadv.study.schedule import Model, models_needed, model_of
from imbadv.tracking import names
from imbadv.tracking.provenance import CODE_PARTS

COMMIT = dict.fromkeys(CODE_PARTS, "commit")


def test_the_natural_study_trains_each_remedy_per_seed_and_attacks_from_the_next_seed():
    config = NaturalConfig(preset="smoke", losses="ce,cb", attacks="fgsm,autoattack")
    steps = plan(config, 43, "d", COMMIT)
    trainings = [model_of(dict(s.options)) for s in steps if s.entry == "train"]
    assert sorted(trainings) == sorted(Model(seed, "natural", None, None, loss) for seed in (0, 1, 2)
                                       for loss in ("ce", "cb"))  # no balanced model: nothing needs it
    evaluations = [s for s in steps if s.entry == "evaluate"]
    assert Counter((dict(s.options)["attack"], dict(s.options)["source"]) for s in evaluations) == {
        ("fgsm", "self"): 6, ("fgsm", "peer"): 6, ("autoattack", "self"): 6}
    peers = {(dict(s.options)["seed"], dict(s.options)["source_seed"]) for s in evaluations
             if dict(s.options)["source"] == "peer"}
    assert peers == {(0, 1), (1, 2), (2, 0)}
    cb_peer = next(s for s in evaluations if dict(s.options)["source"] == "peer" and dict(s.options).get("loss") == "cb"
                   and dict(s.options)["seed"] == 2)
    assert models_needed(cb_peer) == {Model(2, "natural", None, None, "cb"), Model(0, "natural", None, None, "cb")}
    assert all("attack_classes" not in dict(s.options) for s in evaluations)  # every class is read
    assert len({s.key for s in steps}) == len(steps)
    assert config.kind == "natural"


def test_posthoc_attacks_the_natural_cross_entropy_model_adjusted_from_its_plain_peer():
    base = NaturalConfig(preset="smoke", losses="ce,cb", attacks="fgsm,autoattack")
    adjusted = NaturalConfig(**{**base.__dict__, "posthoc": "1"})
    before, after = plan(base, 43, "d", COMMIT), plan(adjusted, 43, "d", COMMIT)
    assert [s for s in after if s.entry == "train"] == [s for s in before if s.entry == "train"]
    new = [dict(s.options) for s in after if s.key not in {b.key for b in before}]
    # the ce model of each seed, adjusted: FGSM white-box and from the peer, AutoAttack white-box
    assert Counter((e["attack"], e["source"]) for e in new) == {("fgsm", "self"): 3, ("fgsm", "peer"): 3,
                                                                  ("autoattack", "self"): 3}
    assert {(e["sampling"], e.get("loss", "ce"), e["posthoc_tau"]) for e in new} == {("natural", "ce", 1.0)}
    peer = next(s for s in after if dict(s.options).get("posthoc_tau") and dict(s.options)["source"] == "peer")
    assert models_needed(peer) == {Model(s, "natural", None, None) for s in (dict(peer.options)["seed"],
                                                                              dict(peer.options)["source_seed"])}


def test_a_peer_study_keeps_the_balanced_model_where_the_curve_needs_it():
    config = SweepConfig(preset="smoke", classes="3", ratios="1,5", longtail="", black_box="peer", seeds=2)
    trainings = [model_of(dict(s.options)) for s in plan(config, 10, "d", COMMIT) if s.entry == "train"]
    assert {m.sampling for m in trainings} == {"balanced", "under", "over"}
    assert not StudyConfig(preset="smoke", black_box="peer", seeds=2).trains_balanced


def test_options_added_later_leave_earlier_studies_keys_alone():
    identity = StudyConfig().identity
    assert not {"natural", "black_box", "posthoc"} & set(identity)
    assert NaturalConfig().identity["black_box"] == "peer" and NaturalConfig().identity["natural"] is True


@pytest.mark.parametrize(("options", "message"), [
    ({"seeds": 1}, "--black-box peer .* pass --seeds 2 or more"),
    ({"black_box": "other"}, "unknown --black-box 'other'")])
def test_bad_natural_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        NaturalConfig(**options)


@pytest.mark.parametrize(("options", "message"), [
    ({"source_seed": 2}, "--source-seed names the peer model's seed: use it with --source peer"),
    ({"source": "peer", "seed": 1, "source_seed": 1}, "the peer of seed 1 is the target itself"),
    ({"source": "self", "source_uri": "models:/x/1"}, "--source-uri pins the balanced or peer source")])
def test_bad_peer_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        EvaluateConfig(**{"sampling": "natural", **options})


def _smoke(data, cache, **options) -> dict:
    return {"preset": "smoke", "data": str(data), "cache_dir": str(cache), "device": "cpu", "sampling": "natural",
            **options}


@pytest.mark.slow
def test_a_peer_attack_comes_from_the_same_model_of_another_seed(store, synthetic_data, session_cache):
    first = run_train(**_smoke(synthetic_data, session_cache))
    second = run_train(**_smoke(synthetic_data, session_cache, seed=1))
    assert first.model_name == second.model_name == "imbadv-cifar10-small-natural"
    white = run_evaluate(**_smoke(synthetic_data, session_cache, eps=0.05))
    peer = run_evaluate(**_smoke(synthetic_data, session_cache, eps=0.05, source="peer"))
    run = MlflowClient().get_run(peer.run_id)
    assert run.info.run_name == "eval-blackbox-s1-natural-fgsm-ascent-eps0.05"
    assert run.data.tags[names.TAG_TARGET] == f"{first.model_name}/{first.version}"
    assert run.data.tags[names.TAG_SOURCE] == f"{second.model_name}/{second.version}"
    assert peer.clean_acc == pytest.approx(white.clean_acc) and peer.adv_acc != white.adv_acc
    back = run_evaluate(**_smoke(synthetic_data, session_cache, eps=0.05, seed=1, source="peer", source_seed=0))
    assert MlflowClient().get_run(back.run_id).data.tags[names.TAG_SOURCE] == f"{first.model_name}/{first.version}"
    with pytest.raises(ConfigError, match="is the target's own seed"):  # a pinned source of the target's seed
        run_evaluate(**_smoke(synthetic_data, session_cache, source="peer",
                              source_uri=f"models:/{first.model_name}/{first.version}"))


def test_a_study_names_classes_by_the_datasets_own_names():
    names = ("speed-limit-20", "speed-limit-30", "stop", "yield")
    config = SweepConfig(preset="smoke", classes="stop,0", ratios="1,5", longtail="")
    assert config.class_ids(4, names) == (2, 0)
    steps = plan(config, 4, "d", COMMIT, names)
    assert {dict(s.options)["class_id"] for s in steps if dict(s.options)["sampling"] == "under"} == {0, 2}
    with pytest.raises(ConfigError, match=r"dataset's class names \(speed-limit-20, .*--classes speed-limit-20"):
        SweepConfig(classes="cat").class_ids(4, names)
    assert StudyConfig(classes="cat,dog").class_ids(10) == (3, 5)  # CIFAR-10's names by default
