"""Run names, registry names and model labels are built from the resolved config, in one place."""

from __future__ import annotations

from imbadv.config import model_label, resolve_evaluate_config, resolve_train_config
from imbadv.jobs.evaluate import run_name as evaluate_run_name
from imbadv.jobs.train import run_name as train_run_name
from imbadv.study.plan import Step
from imbadv.tracking.names import registered_model_name


def test_run_names_come_from_the_resolved_config():
    assert train_run_name(resolve_train_config(sampling="over", class_id=3, preset="cpu", seed=2)) == \
        "train-over-c3-cpu-s2"
    assert train_run_name(resolve_train_config()) == "train-balanced-paper-s0"  # the config's defaults
    assert evaluate_run_name(resolve_evaluate_config(sampling="under", class_id=5, attack="ifgsm",
                                                     direction="descent", eps=0.03, source="balanced")) == \
        "eval-blackbox-under-c5-ifgsm-descent-eps0.03"


def test_an_eps_of_zero_is_named_as_such():
    assert evaluate_run_name(resolve_evaluate_config(eps=0.0)) == "eval-whitebox-balanced-fgsm-ascent-eps0"
    assert evaluate_run_name(resolve_evaluate_config(source="models:/m/1")).startswith("eval-transfer-")


def test_one_model_label_everywhere():
    assert model_label("balanced", None) == "balanced" and model_label("under", 3) == "under-c3"
    assert registered_model_name("cifar10", "over", 7) == "imbadv-cifar10-over-c7"
    step = Step("train", (("class_id", 4), ("sampling", "under"), ("seed", 1)), "k")
    assert step.label == "train under-c4 s1"
