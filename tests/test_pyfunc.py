"""The registered pyfunc as a user calls it: uint8 or float, channels first or last, one-line refusals,
a DataFrame of class names and probabilities, and a version that says what it is and how to call it.

One smoke model is trained for the whole module, on `module_store` (the module-wide `store`).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, get_model_info
from mlflow.tracking import MlflowClient

from imbadv.core.data import load_dataset
from imbadv.jobs.train import run_train
from imbadv.tracking import registry
from imbadv.tracking.pyfunc_model import CLASS_COLUMN, INDEX_COLUMN, probability_columns

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow  # the module trains a model first: over 5 s


@pytest.fixture(scope="session")
def small_data(synthetic_data):
    """These tests check the plumbing, not accuracy: synthetic images, no CIFAR-10 archive needed."""
    return synthetic_data


@pytest.fixture(scope="module")
def registered(module_store, small_data, session_cache) -> SimpleNamespace:
    outcome = run_train(preset="smoke", data=str(small_data), cache_dir=str(session_cache), device="cpu",
                        sampling="under", class_id=3)
    uri = f"models:/{outcome.model_name}@smoke-s0"
    dataset = load_dataset(str(small_data), session_cache)
    return SimpleNamespace(outcome=outcome, uri=uri, model=mlflow.pyfunc.load_model(uri),
                           client=MlflowClient(module_store, module_store),
                           images=dataset.test_images[::15][:20], class_names=list(dataset.class_names))


def test_uint8_nchw_uint8_nhwc_and_float_inputs_agree(registered):
    nchw = registered.images  # uint8 (N, 3, 32, 32)
    reference = registered.model.predict(nchw)
    for images in (nchw.transpose(0, 2, 3, 1), nchw.astype(np.float32) / 255, nchw.astype(np.float64) / 255,
                   nchw.tolist()):  # a JSON-like list of ints, as a served model receives them
        pd.testing.assert_frame_equal(registered.model.predict(images), reference)

    network = registry.load_registered(registered.uri, torch.device("cpu")).network
    with torch.no_grad():
        expected = network(torch.from_numpy(nchw).float() / 255).argmax(1).numpy()
    assert (reference[INDEX_COLUMN].to_numpy() == expected).all()


@pytest.mark.parametrize(("images", "says"), [
    (np.full((2, 3, 32, 32), 200.0, np.float32), "float pixels must be in [0, 1], got 200 to 200: divide 0-255"),
    (np.full((2, 3, 32, 32), np.nan, np.float32), "float pixels must be in [0, 1]"),
    (np.zeros((2, 3, 28, 28), np.uint8), "shape (2, 3, 28, 28) do not fit: pass (N, 3, 32, 32) or (N, 32, 32, 3)"),
    (np.zeros((32, 32, 3), np.uint8), "add a batch axis"),
    (np.full((2, 32, 32, 3), 300, np.int64), "integer pixels must be 0-255"),
    (np.full((2, 32, 32, 3), "a"), "are not pixels"),
], ids=["0-255-floats", "nan", "28x28", "no-batch-axis", "int-300", "strings"])
def test_wrong_inputs_are_refused_in_one_line(registered, images, says):
    with pytest.raises(MlflowException) as refused:
        registered.model.predict(images)
    message = refused.value.message
    assert says in message and "\n" not in message and len(message) < 200, message


def test_predictions_are_a_frame_of_class_names_and_probabilities(registered):
    frame = registered.model.predict(registered.images)
    probabilities = probability_columns(registered.class_names)
    assert list(frame.columns) == [CLASS_COLUMN, INDEX_COLUMN, *probabilities]
    assert "p_cat" in probabilities and len(frame) == len(registered.images)
    assert np.allclose(frame[probabilities].sum(axis=1), 1.0)
    assert (frame[INDEX_COLUMN] == frame[probabilities].to_numpy().argmax(axis=1)).all()
    assert frame[CLASS_COLUMN].tolist() == [registered.class_names[k] for k in frame[INDEX_COLUMN]]
    reversed_frame = registered.model.predict(registered.images[::-1])  # rows follow the input order
    assert reversed_frame[CLASS_COLUMN].tolist() == frame[CLASS_COLUMN].tolist()[::-1]


def test_the_version_has_a_description_signature_and_input_example(registered):
    outcome = registered.outcome
    version = registered.client.get_model_version_by_alias(outcome.model_name, "smoke-s0")
    description = version.description
    for fact in ("Dataset cifar10-small", "sampling under (class 3, cat, under-sampled)", "preset smoke", "seed 0",
                 f"clean test accuracy {outcome.test_acc:.4f}", outcome.run_id):
        assert fact in description, description
    assert registry.usage_snippet(f"models:/{outcome.model_name}/{outcome.version}") in description

    info = get_model_info(registered.uri)
    assert info.signature.inputs is None  # on purpose: see registry.model_signature
    assert info.signature.outputs.input_names() == [CLASS_COLUMN, INDEX_COLUMN,
                                                    *probability_columns(registered.class_names)]
    local = mlflow.artifacts.download_artifacts(registered.uri)
    example = Model.load(local).load_input_example(local)
    assert np.asarray(example).shape == (1, 32, 32, 3)
    assert len(registered.model.predict(example)) == 1


def _readme_snippet() -> str:
    """The Python block of the README's registry section."""
    text = README.read_text()
    section = re.search(r"^## [^\n]*registry[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S | re.I)
    assert section, "README.md has no section whose heading names the registry"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, "the README's registry section has no ```python example"
    return block.group(1)


def test_the_readme_example_runs(registered, capsys):
    snippet = _readme_snippet()
    readme_uri = re.search(r'"(models:/[^"]+)"', snippet).group(1)
    assert snippet == registry.usage_snippet(readme_uri)  # the three lines every description shows
    exec(snippet.replace(readme_uri, registered.uri), {})
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    assert CLASS_COLUMN in header and INDEX_COLUMN in header and "[5 rows x 12 columns]" in printed, printed
