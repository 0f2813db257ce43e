"""Which test images an evaluation attacks: --images-per-class and --attack-classes."""

from __future__ import annotations

import numpy as np
import pytest

from imbadv.config import ConfigError, resolve_evaluate_config
from imbadv.jobs.evaluate import attacked_indices

LABELS = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])


def test_every_image_by_default_and_the_first_n_of_each_class_in_the_datasets_order():
    assert attacked_indices(LABELS, 3).tolist() == list(range(10))
    assert attacked_indices(LABELS, 3, images_per_class=2).tolist() == [0, 1, 2, 3, 4, 5]
    assert attacked_indices(LABELS, 3, images_per_class=1).tolist() == [0, 1, 2]


def test_only_the_classes_asked_for():
    assert attacked_indices(LABELS, 3, classes=(1,)).tolist() == [2, 5, 8, 9]
    assert attacked_indices(LABELS, 3, images_per_class=2, classes=(1, 2)).tolist() == [0, 2, 4, 5]
    with pytest.raises(ConfigError, match=r"attack classes \[3\] are outside this dataset's 3 classes"):
        attacked_indices(LABELS, 3, classes=(3,))


@pytest.mark.parametrize(("options", "message"), [
    ({"images_per_class": -1}, "images per class -1 is negative"),
    ({"attack_classes": "cat"}, "not 'all' or comma-separated class ids"),
    ({"attack_classes": "-2"}, "not 'all' or comma-separated class ids")])
def test_bad_subsets_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        resolve_evaluate_config(preset="smoke", **options)
    assert resolve_evaluate_config(preset="smoke", attack_classes="3,5").attacked_classes == (3, 5)
