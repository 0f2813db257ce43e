"""GTSRB, a naturally imbalanced dataset, on a slice of its archive: class names from `NN-name` folders,
its own input normalisation, validation splits that keep each track (frames of one sign) whole, and
trainings through the real train job.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mlflow.tracking import MlflowClient
from onnx import numpy_helper
from typer.testing import CliRunner

from conftest import CIFAR10_CLASSES, GTSRB_SLICE_TEST, GTSRB_SLICE_TRACKS
from imbadv.cli import app
from imbadv.config import ConfigError, TrainConfig
from imbadv.core.data import class_id_of, load_dataset
from imbadv.core.model import CIFAR10_MEAN, CIFAR10_STD, input_statistics
from imbadv.core.sampling import sample_split
from imbadv.jobs.train import run_train
from imbadv.tracking import names
from imbadv.tracking.registry import load_registered

SLICE_CLASSES = ("speed-limit-20", "speed-limit-50", "stop", "curve-left")
FRAMES = 30  # frames in every training track of the slice's classes
STOP = 2


@pytest.fixture(scope="module")
def gtsrb(gtsrb_small, session_cache):
    return load_dataset(str(gtsrb_small), session_cache)


def test_class_names_drop_the_id_prefix_and_keep_the_folders_order(gtsrb):
    assert gtsrb.name == "gtsrb32-small"
    assert gtsrb.class_names == SLICE_CLASSES
    assert np.bincount(gtsrb.train_labels).tolist() == [FRAMES * n for n in GTSRB_SLICE_TRACKS.values()]
    assert np.bincount(gtsrb.test_labels).tolist() == [GTSRB_SLICE_TEST] * len(SLICE_CLASSES)


def test_a_class_is_named_by_its_id_or_its_name_and_an_unknown_name_lists_the_datasets(gtsrb_small, session_cache):
    data = str(gtsrb_small)
    assert class_id_of("stop", data, session_cache) == STOP
    assert class_id_of("Speed-Limit-50", data, session_cache) == 1
    assert class_id_of("3", data, session_cache) == 3 and class_id_of(None, data, session_cache) is None
    with pytest.raises(ConfigError) as error:
        class_id_of("cat", data, session_cache)  # a CIFAR-10 name means nothing here
    assert str(error.value) == ("unknown class 'cat': pass a class id (0-3) or one of this dataset's class names "
                                "(speed-limit-20, speed-limit-50, stop, curve-left)")
    assert class_id_of("cat", "cifar10", session_cache) == 3  # CIFAR-10's names need no download


def test_training_statistics_are_numpys_and_only_cifar10_keeps_its_constants(gtsrb):
    pixels = gtsrb.train_images.astype(np.float64) / 255
    np.testing.assert_allclose(gtsrb.train_mean, pixels.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(gtsrb.train_std, pixels.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert input_statistics(gtsrb.class_names, gtsrb.train_mean, gtsrb.train_std) == (gtsrb.train_mean,
                                                                                       gtsrb.train_std)
    assert input_statistics(CIFAR10_CLASSES, gtsrb.train_mean, gtsrb.train_std) == (CIFAR10_MEAN, CIFAR10_STD)


def test_groups_are_the_manifests_tracks_within_each_class(gtsrb, gtsrb_small):
    with open(gtsrb_small / "manifest.csv", newline="") as handle:
        rows = sorted((r["path"], r["class_id"], r["track"]) for r in csv.DictReader(handle) if r["split"] == "train")
    pairs = [(class_id, track) for _, class_id, track in rows]  # the training images' order: folder, then file
    groups = gtsrb.train_groups
    assert groups.shape == gtsrb.train_labels.shape and groups.dtype == np.int64
    assert len(set(pairs)) == len(np.unique(groups)) == sum(GTSRB_SLICE_TRACKS.values())
    assert len(set(zip(pairs, groups.tolist(), strict=True))) == len(set(pairs))  # one id per (class, track)
    for group in np.unique(groups):
        assert (groups == group).sum() == FRAMES and len(np.unique(gtsrb.train_labels[groups == group])) == 1


@pytest.mark.parametrize("options", [
    {"sampling": "natural"},
    {"sampling": "natural", "val_fraction": 0.3},
    {"sampling": "balanced", "majority_count": 75},
    {"sampling": "under", "class_id": STOP, "ratio": 1.5, "majority_count": 90},
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_track_straddles_training_and_validation(gtsrb, options, seed):
    labels, groups = gtsrb.train_labels, gtsrb.train_groups
    config = TrainConfig(seed=seed, **options)
    split = sample_split(labels, config, gtsrb.num_classes, groups)
    assert not set(groups[split.train].tolist()) & set(groups[split.val].tolist())
    assert np.intersect1d(split.train, split.val).size == 0
    kept = np.bincount(labels[np.concatenate([split.train, split.val])], minlength=4)
    val = np.bincount(labels[split.val], minlength=4)
    for k in range(gtsrb.num_classes):  # stratified: whole tracks until each class's share is reached
        wanted = round(kept[k] * config.val_fraction)
        assert wanted <= val[k] < wanted + FRAMES
    again = sample_split(labels, TrainConfig(seed=seed, **options), gtsrb.num_classes, groups)
    assert np.array_equal(again.train, split.train) and np.array_equal(again.val, split.val)


def test_a_cut_class_keeps_whole_tracks_but_the_last_and_seeds_draw_other_tracks(gtsrb):
    labels, groups = gtsrb.train_labels, gtsrb.train_groups
    kept = {}
    for seed in (0, 1, 2, 3):
        split = sample_split(labels, TrainConfig(sampling="balanced", majority_count=75, seed=seed), 4, groups)
        both = np.concatenate([split.train, split.val])
        for k in range(gtsrb.num_classes):  # 75 images: two whole tracks and 15 frames of a third
            sizes = sorted(np.unique(groups[both[labels[both] == k]], return_counts=True)[1].tolist())
            assert sizes == [15, FRAMES, FRAMES]
        kept[seed] = frozenset(groups[both].tolist())
    assert len(set(kept.values())) > 1


def test_a_class_cut_to_one_track_cannot_hold_a_track_out(gtsrb):
    config = TrainConfig(sampling="under", class_id=STOP, majority_count=90)  # stop keeps 18 frames of one track
    with pytest.raises(ConfigError, match="class 2 keeps 18 images in 1 group, all held out by the validation "
                                          "split of whole groups: raise --majority-count"):
        sample_split(gtsrb.train_labels, config, 4, gtsrb.train_groups)
    with pytest.raises(ConfigError, match="class 0 keeps 90 images in 3 groups, all held out"):
        sample_split(gtsrb.train_labels, TrainConfig(sampling="natural", val_fraction=0.9), 4, gtsrb.train_groups)
    split = sample_split(gtsrb.train_labels, TrainConfig(sampling="under", class_id=STOP, majority_count=90,
                                                         val_fraction=0), 4, gtsrb.train_groups)
    assert np.bincount(gtsrb.train_labels[split.train]).tolist() == [90, 90, 18, 90]


@pytest.mark.parametrize(("options", "message"), [
    ({"sampling": "balanced", "majority_count": 100},
     "class 0 has 90 training images, fewer than the 100 asked: lower --majority-count to 90 or less"),
    ({"sampling": "over", "class_id": 1, "ratio": 2, "majority_count": 160},
     "class 1 has 150 training images, fewer than the 160 asked: lower --majority-count to 150 or less"),
    ({"sampling": "over", "class_id": 1, "ratio": 1.5, "majority_count": 150},  # 136 / 1.5 = 90.7: 90 of class 0
     "class 0 has 90 training images, fewer than the 100 asked: lower --majority-count to 136 or less"),
])
def test_counts_the_slice_cannot_give_are_refused_naming_the_largest_it_can(gtsrb, options, message):
    with pytest.raises(ConfigError) as error:
        sample_split(gtsrb.train_labels, TrainConfig(**options), 4, gtsrb.train_groups)
    assert str(error.value) == message + ", or use --sampling natural"


def _stored_normalisation(onnx_path: Path) -> list[list[float]]:
    """The (1, 3, 1, 1) constants of an ONNX graph: the Normalize layer's mean and std."""
    graph = onnx.load(str(onnx_path)).graph
    tensors = [numpy_helper.to_array(t) for t in graph.initializer]
    tensors += [numpy_helper.to_array(a.t) for node in graph.node for a in node.attribute if a.name == "value"]
    return [t.flatten().tolist() for t in tensors if t.shape == (1, 3, 1, 1)]


@pytest.mark.slow
def test_a_natural_model_trains_on_the_slice_with_its_own_normalisation(store, gtsrb_small, session_cache):
    outcome = run_train(preset="smoke", sampling="natural", data=str(gtsrb_small), cache_dir=str(session_cache),
                        device="cpu")
    assert outcome.model_name == "imbadv-gtsrb32-small-natural"
    dataset = load_dataset(str(gtsrb_small), session_cache)
    params = MlflowClient().get_run(outcome.run_id).data.params
    assert tuple(map(float, params[names.PARAM_NORMALIZE_MEAN].split(","))) == dataset.train_mean
    assert tuple(map(float, params[names.PARAM_NORMALIZE_STD].split(","))) == dataset.train_std
    assert params["val_split"] == "stratified 0.1 of each class's sampled images in whole groups"
    assert params["train_counts"] == "60,120,90,60"  # one whole track of each class validates

    model = load_registered(f"models:/{outcome.model_name}/{outcome.version}", torch.device("cpu"))
    assert model.class_names == SLICE_CLASSES
    assert tuple(model.network.spec.mean) == dataset.train_mean and tuple(model.network.spec.std) == dataset.train_std
    stored = _stored_normalisation(model.onnx_path)
    for values in (dataset.train_mean, dataset.train_std):
        assert any(np.allclose(s, values, rtol=0, atol=1e-7) for s in stored)


@pytest.mark.slow
def test_a_class_named_on_the_command_line_trains_and_is_registered_by_its_id(store, gtsrb_small, session_cache):
    result = CliRunner().invoke(app, ["train", "--preset", "smoke", "--device", "cpu", "--data", str(gtsrb_small),
                                      "--cache-dir", str(session_cache), "--sampling", "under", "--class-id", "stop",
                                      "--ratio", "1.5", "--majority-count", "90"])
    assert result.exit_code == 0, result.output
    version = MlflowClient().get_model_version_by_alias("imbadv-gtsrb32-small-under-c2-r1.5", "smoke-s0")
    assert (version.tags["class_id"], version.tags["class_name"]) == ("2", "stop")
    assert version.tags["train_counts"] == "60,60,30,60"


@pytest.mark.slow
def test_the_whole_archive_has_the_readmes_classes_counts_tracks_and_statistics(gtsrb_archive, tmp_path):
    dataset = load_dataset(str(gtsrb_archive), tmp_path / "cache")  # not the session's: CIFAR-10 unpacks there
    assert dataset.name == "gtsrb32" and len(dataset.class_names) == 43
    assert (dataset.class_names[0], dataset.class_names[14], dataset.class_names[42]) == (
        "speed-limit-20", "stop", "end-no-passing-trucks")
    counts = np.bincount(dataset.train_labels)
    assert counts.sum() == 39209 and len(dataset.test_labels) == 12630
    assert (counts.min(), counts[0], counts.max(), counts.argmax()) == (210, 210, 2250, 2)
    assert len(np.unique(dataset.train_groups)) == 1307
    assert tuple(round(m, 4) for m in dataset.train_mean) == (0.3398, 0.3117, 0.3210)
    assert tuple(round(s, 4) for s in dataset.train_std) == (0.2755, 0.2647, 0.2712)
    with pytest.raises(ConfigError, match="lower --majority-count to 210 or less"):
        sample_split(dataset.train_labels, TrainConfig(sampling="balanced", majority_count=300), 43,
                     dataset.train_groups)
