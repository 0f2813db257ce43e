"""ONNX export with a dynamic batch axis, and its onnxruntime cross-check against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from imbadv.core.export import INPUT_NAME, OUTPUT_NAME, compare_with_torch, export_onnx, onnx_logits, onnx_session
from imbadv.core.inference import predict_logits
from imbadv.core.model import VGG, VGGSpec


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> VGG:
    torch.manual_seed(0)
    return VGG(VGGSpec(width=4, dense_units=32)).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return path, onnx_session(path)


@pytest.fixture(scope="module")
def uint8_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_export_writes_a_valid_model(exported):
    path, _ = exported
    assert path.exists() and path.stat().st_size > 1000
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]


def test_batch_axis_is_dynamic(exported):
    proto = onnx.load(str(exported[0]))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert len(dims) == 4
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_logits_for_any_batch(model, exported, uint8_images, batch):
    _, session = exported
    images = uint8_images[:batch]
    logits = onnx_logits(session, images.numpy())
    assert logits.shape == (batch, 10)
    with torch.no_grad():
        reference = model(images.float() / 255.0).numpy()
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4)


def test_onnx_logits_batches_are_concatenated_in_order(exported, uint8_images):
    _, session = exported
    images = uint8_images[:7].numpy()
    np.testing.assert_allclose(onnx_logits(session, images, batch_size=3), onnx_logits(session, images),
                               rtol=0, atol=1e-5)


def test_export_leaves_the_model_untouched(uint8_images, tmp_path):
    torch.manual_seed(1)
    model = VGG(VGGSpec(width=2, dense_units=8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_compare_with_torch_agrees(model, exported, uint8_images):
    _, session = exported
    check = compare_with_torch(model, session, uint8_images, batch_size=16)
    assert check.agreement == 1.0
    assert check.max_abs_diff < 1e-4
    assert check.onnx_logits.shape == (50, 10)
    reference = predict_logits(model, uint8_images, 50).numpy()
    np.testing.assert_allclose(check.onnx_logits, reference, rtol=0, atol=1e-4)


def test_compare_with_torch_detects_a_different_model(exported, uint8_images):
    """The check is not vacuous: other weights give a large logit difference."""
    _, session = exported
    torch.manual_seed(99)
    other = VGG(VGGSpec(width=4, dense_units=32)).eval()
    check = compare_with_torch(other, session, uint8_images)
    assert check.max_abs_diff > 1e-3


def test_compare_with_torch_uses_given_logits(model, exported, uint8_images):
    _, session = exported
    fake = torch.zeros(50, 10)
    check = compare_with_torch(model, session, uint8_images, torch_logits=fake)
    assert check.max_abs_diff == pytest.approx(float(np.abs(check.onnx_logits).max()))
