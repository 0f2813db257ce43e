"""Each model of a study starts from its own weights (paper section 4: independently trained models)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from imbadv.config import resolve_train_config
from imbadv.study.config import StudyConfig
from imbadv.core.model import weights_sha256
from imbadv.core.trainer import initial_network
from imbadv.jobs.train import run_train
from imbadv.study.plan import plan
from imbadv.tracking import names
from imbadv.tracking.provenance import CODE_PARTS


def _models(**options) -> list:
    configs = [resolve_train_config(preset="smoke", sampling="balanced", **options)]
    for c in range(10):
        configs += [resolve_train_config(preset="smoke", sampling=s, class_id=c, **options) for s in ("under", "over")]
    return configs


def test_the_21_models_of_a_seed_start_from_21_different_weights_and_the_same_model_from_the_same(one_thread):
    configs = _models()
    hashes = [weights_sha256(initial_network(c, 10)) for c in configs]
    assert len(set(hashes)) == 21 and len({c.init_seed for c in configs}) == 21
    assert weights_sha256(initial_network(configs[5], 10)) == hashes[5]  # reproducible
    assert resolve_train_config(preset="smoke", seed=1).init_seed != configs[0].init_seed


def test_shared_init_starts_every_model_of_a_seed_from_the_seeds_weights(one_thread):
    configs = _models(shared_init=True)
    assert {c.init_seed for c in configs} == {0}
    assert len({weights_sha256(initial_network(c, 10)) for c in configs}) == 1


def test_a_study_passes_shared_init_to_its_trainings_only():
    steps = plan(StudyConfig(preset="smoke", classes="3", shared_init=True), 10, "d", dict.fromkeys(CODE_PARTS, "c"))
    assert all(dict(s.options).get("shared_init") is True for s in steps if s.entry == "train")
    assert all("shared_init" not in dict(s.options) for s in steps if s.entry == "evaluate")
    independent = plan(StudyConfig(preset="smoke", classes="3"), 10, "d", dict.fromkeys(CODE_PARTS, "c"))
    assert {s.key for s in steps if s.entry == "train"}.isdisjoint(s.key for s in independent)  # trained afresh


@pytest.mark.slow
def test_a_training_logs_its_init_seed_and_the_hash_of_its_initial_weights(store, small_data, session_cache):
    options = {"preset": "smoke", "data": str(small_data), "cache_dir": str(session_cache), "device": "cpu",
               "sampling": "under", "class_id": 3}
    run = MlflowClient().get_run(run_train(**options).run_id)
    config = resolve_train_config(**options)
    assert run.data.params["init_seed"] == str(config.init_seed)
    assert run.data.tags[names.TAG_INIT_SHA256] == weights_sha256(initial_network(config, 10))
