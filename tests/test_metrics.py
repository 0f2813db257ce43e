"""Per-class accuracy, confusion matrices and their CSV / PNG renderings."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from imbadv.core.metrics import confusion_matrix, per_class_accuracy, relative_drop, write_confusion_csv
from imbadv.core.plots import adversarial_grid_figure, plot_adversarial_grid, plot_confusion

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ("cat", "dog", "ship", "frog")


@pytest.fixture
def confusion() -> np.ndarray:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 2, 0, 2, 2])
    return confusion_matrix(labels, predictions, num_classes=4)


def test_confusion_rows_are_true_columns_predicted(confusion):
    expected = np.array([
        [1, 2, 0, 0],   # true 0: once right, twice called 1
        [0, 1, 1, 0],   # true 1: once right, once called 2
        [1, 0, 3, 0],   # true 2: three right, once called 0
        [0, 0, 0, 0],   # class 3 has no images
    ])
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.shape == (4, 4)
    assert confusion.sum() == 9


def test_confusion_is_not_symmetric_in_its_arguments():
    labels, predictions = np.array([0, 0, 0]), np.array([1, 1, 1])
    cm = confusion_matrix(labels, predictions, 2)
    assert cm[0, 1] == 3 and cm[1, 0] == 0


def test_confusion_has_every_class_even_if_unseen():
    cm = confusion_matrix(np.array([1]), np.array([1]), num_classes=5)
    assert cm.shape == (5, 5)
    assert cm[1, 1] == 1 and cm.sum() == 1


def test_per_class_accuracy(confusion):
    accuracy = per_class_accuracy(confusion)
    np.testing.assert_allclose(accuracy[:3], [1 / 3, 1 / 2, 3 / 4])
    assert np.isnan(accuracy[3])


def test_relative_drop():
    clean = np.array([0.8, 0.5, 0.0, 0.4])
    adversarial = np.array([0.4, 0.5, 0.0, 0.6])
    drop = relative_drop(clean, adversarial)
    np.testing.assert_allclose(drop[[0, 1, 3]], [0.5, 0.0, -0.5])
    assert np.isnan(drop[2])
    assert not np.isnan(drop[[0, 1, 3]]).any()


def test_relative_drop_full_loss_is_one():
    np.testing.assert_allclose(relative_drop(np.array([0.9, 0.2]), np.array([0.0, 0.0])), [1.0, 1.0])


def test_write_confusion_csv(confusion, tmp_path):
    path = write_confusion_csv(confusion, NAMES, tmp_path / "nested" / "confusion.csv")
    assert path.exists()
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true\\predicted", *NAMES]
    assert [row[0] for row in rows[1:]] == list(NAMES)
    body = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    np.testing.assert_array_equal(body, confusion)
    assert rows[1] == ["cat", "1", "2", "0", "0"]


def _assert_png(path, min_bytes: int = 2000) -> None:
    import matplotlib.image

    assert path.exists()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


def test_plot_confusion_writes_png(confusion, tmp_path):
    path = plot_confusion(confusion, NAMES, "clean", tmp_path / "plots" / "confusion.png")
    _assert_png(path)


@pytest.mark.parametrize("count", [1, 3])
def test_plot_adversarial_grid_writes_png(tmp_path, count):
    rng = np.random.default_rng(0)
    clean = rng.random((count, 3, 32, 32)).astype(np.float32)
    adversarial = np.clip(clean + 0.03 * np.sign(rng.normal(size=clean.shape)), 0, 1).astype(np.float32)
    labels = np.arange(count) % len(NAMES)
    clean_pred = labels.copy()
    adv_pred = (labels + 1) % len(NAMES)
    path = plot_adversarial_grid(clean, adversarial, labels, clean_pred, adv_pred, NAMES, "fgsm eps=0.03",
                                 tmp_path / "grid" / "grid.png")
    _assert_png(path)


def test_adversarial_grid_labels_overlap_neither_each_other_nor_the_images():
    from matplotlib.text import Text

    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    rng = np.random.default_rng(0)
    clean = rng.random((8, 3, 32, 32)).astype(np.float32)
    labels = np.arange(8)
    fig = adversarial_grid_figure(clean, clean, labels, labels, (labels + 1) % 10, names,
                                  "fgsm ascent, eps=0.01, source=balanced")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert {"clean", "adversarial", "true: automobile", "pred: ship"} <= {t.get_text() for t in texts}
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    images = [image.get_window_extent(renderer) for ax in fig.axes for image in ax.get_images()]
    assert len(images) == 16  # each image drawn on its own
    for i, (text, box) in enumerate(boxes):
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, text
        assert not any(box.overlaps(image) for image in images), f"{text!r} is drawn over an image"
        assert not any(box.overlaps(other) for _, other in boxes[i + 1:]), f"{text!r} overlaps another label"


def test_attack_success_rate_counts_only_images_correct_before_the_attack():
    from imbadv.core.metrics import attack_success_rate

    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    clean = np.array([0, 0, 0, 1, 1, 0, 0])  # class 0: 3 correct; class 1: 1 correct; class 2: none
    adv = np.array([1, 0, 2, 0, 0, 0, 2])  # class 0: 2 of the 3 flipped; class 1: flipped
    rates = attack_success_rate(labels, clean, adv, 3)
    assert rates[0] == pytest.approx(2 / 3) and rates[1] == 1.0 and np.isnan(rates[2])
    (overall,) = attack_success_rate(labels, clean, adv, 3, by_class=False)
    assert overall == pytest.approx(3 / 4)
