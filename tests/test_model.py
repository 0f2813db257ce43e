"""The adapted VGG (section 3.1): shapes, layer layout, in-model normalisation, spec round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imbadv.config import CIFAR10_CLASSES, TrainConfig
from imbadv.core.model import CIFAR10_MEAN, CIFAR10_STD, VGG, Normalize, VGGSpec, input_statistics
from imbadv.core.trainer import initial_network

WIDTH = 4
DENSE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> VGG:
    torch.manual_seed(0)
    return VGG(VGGSpec(width=WIDTH, dense_units=DENSE)).eval()


def _conv_blocks(model: VGG) -> list[list[nn.Conv2d]]:
    """Conv layers of `model.features`, grouped by the max pool that ends each block."""
    blocks: list[list[nn.Conv2d]] = [[]]
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            blocks[-1].append(layer)
        elif isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    assert blocks[-1] == [], "the features must end with a max pool"
    return blocks[:-1]


@pytest.mark.parametrize("batch", [1, 5])
def test_output_shape(model, batch):
    out = model(torch.rand(batch, 3, 32, 32))
    assert out.shape == (batch, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_output_shape_follows_num_classes():
    net = VGG(VGGSpec(num_classes=3, width=2, dense_units=8))
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_conv_blocks_are_2_3_3_with_doubling_widths(model):
    blocks = _conv_blocks(model)
    assert [len(b) for b in blocks] == [2, 3, 3]
    expected_out = [WIDTH, 2 * WIDTH, 4 * WIDTH]
    in_channels = 3
    for block, width in zip(blocks, expected_out, strict=True):
        for conv in block:
            assert conv.in_channels == in_channels
            assert conv.out_channels == width
            assert conv.kernel_size == (3, 3)
            assert conv.padding == (1, 1)
            assert conv.stride == (1, 1)
            in_channels = width


def test_every_conv_is_followed_by_relu(model):
    layers = list(model.features)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.ReLU)


def test_three_2x2_max_pools(model):
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    for pool in pools:
        assert pool.kernel_size in (2, (2, 2))
        assert pool.stride in (2, (2, 2))
    # 32 -> 16 -> 8 -> 4 after the three pools
    assert model.features(torch.rand(1, 3, 32, 32)).shape == (1, 4 * WIDTH, 4, 4)


def test_classifier_is_one_dense_relu_then_output(model):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    dense, output = linears
    assert dense.in_features == 4 * WIDTH * 4 * 4
    assert dense.out_features == DENSE
    assert output.in_features == DENSE
    assert output.out_features == 10
    layers = [m for m in model.classifier if not isinstance(m, nn.Dropout)]
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]


def test_normalisation_is_the_first_layer(model):
    first = model.features[0]
    assert isinstance(first, Normalize)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    mean_image = mean.expand(2, 3, 32, 32).clone()
    assert torch.allclose(first(mean_image), torch.zeros(2, 3, 32, 32), atol=1e-7)
    # one std above the mean is 1 in every channel
    assert torch.allclose(first(mean_image + std), torch.ones(2, 3, 32, 32), atol=1e-6)


def test_normalisation_statistics_travel_in_the_state_dict(model):
    state = model.state_dict()
    assert torch.allclose(state["features.0.mean"].flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.allclose(state["features.0.std"].flatten(), torch.tensor(CIFAR10_STD))


def test_cifar10_keeps_its_constants_and_another_dataset_normalises_by_its_own_statistics():
    own = ((0.3398, 0.3117, 0.321), (0.2755, 0.2647, 0.2712))  # GTSRB's training set
    assert input_statistics(CIFAR10_CLASSES, *own) == (CIFAR10_MEAN, CIFAR10_STD)
    assert input_statistics(("stop", "yield"), *own) == own
    assert input_statistics(CIFAR10_CLASSES[:5], *own) == own  # a slice of CIFAR-10 is data of its own
    network = initial_network(TrainConfig(width=2, dense_units=8), 2, *own)
    assert (network.spec.mean, network.spec.std) == own
    assert torch.allclose(network.state_dict()["features.0.mean"].flatten(), torch.tensor(own[0]))
    assert initial_network(TrainConfig(width=2, dense_units=8), 10).spec.mean == CIFAR10_MEAN


def test_custom_mean_std_are_used():
    spec = VGGSpec(width=2, dense_units=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    norm = VGG(spec).features[0]
    x = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(norm(x), torch.zeros(1, 3, 4, 4), atol=1e-7)


def _expected_parameters(w: int, dense: int, classes: int = 10) -> int:
    convs = [(3, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 2 * w),
             (2 * w, 4 * w), (4 * w, 4 * w), (4 * w, 4 * w)]
    count = sum(9 * c_in * c_out + c_out for c_in, c_out in convs)
    count += 4 * w * 16 * dense + dense
    count += dense * classes + classes
    return count


@pytest.mark.parametrize("width", [2, 4, 8])
def test_parameter_count_matches_architecture(width):
    net = VGG(VGGSpec(width=width, dense_units=DENSE))
    assert sum(p.numel() for p in net.parameters()) == _expected_parameters(width, DENSE)


def test_width_scales_parameters():
    counts = [sum(p.numel() for p in VGG(VGGSpec(width=w, dense_units=DENSE)).parameters())
              for w in (2, 4, 8)]
    assert counts[0] < counts[1] < counts[2]
    # conv weights grow ~quadratically with the width: doubling more than doubles the count
    assert counts[2] > 2 * counts[1]


def test_dropout_and_batch_norm_off_by_default(model):
    spec = VGGSpec()
    assert spec.dropout == 0.0 and spec.batch_norm is False
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    # with dropout off, train mode is deterministic
    x = torch.rand(3, 3, 32, 32)
    model.train()
    try:
        assert torch.equal(model(x), model(x))
    finally:
        model.eval()


def test_dropout_and_batch_norm_when_asked():
    net = VGG(VGGSpec(width=2, dense_units=8, dropout=0.5, batch_norm=True))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 8
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(m.p == 0.5 for m in dropouts)


def test_spec_round_trip():
    spec = VGGSpec(num_classes=7, width=8, dense_units=16, dropout=0.25, batch_norm=True,
                   mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    values = spec.to_dict()
    assert values["width"] == 8 and values["num_classes"] == 7
    assert VGGSpec.from_dict(values) == spec
    # a JSON round trip turns the tuples into lists; from_dict restores them
    as_json = {**values, "mean": list(values["mean"]), "std": list(values["std"])}
    restored = VGGSpec.from_dict(as_json)
    assert restored == spec
    assert isinstance(restored.mean, tuple) and isinstance(restored.std, tuple)
    assert as_json["mean"] == [0.1, 0.2, 0.3]  # from_dict does not mutate its argument


def test_rebuilt_model_loads_weights(model):
    clone = VGG(VGGSpec.from_dict(model.spec.to_dict())).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(clone(x), model(x))
