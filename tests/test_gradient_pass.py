"""One FGSM gradient pass serving every eps and direction: the same pixels and logits as FGSM itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imbadv.config import AttackConfig
from imbadv.core.attacks import fgsm_with_logits
from imbadv.core.gradient_pass import GradientPass, gradient_pass
from imbadv.core.inference import to_unit
from imbadv.core.model import VGG, VGGSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_images() -> tuple[VGG, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = VGG(VGGSpec(width=4, dense_units=16)).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (20, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[:2] = 0  # black images: a descent's step below 0 is clipped
    labels = torch.randint(0, 10, (20,), generator=g)
    return model, images, labels


def test_the_sign_survives_packing_zeros_included():
    sign = torch.tensor([[-1.0, 0.0, 1.0, 1.0, 0.0, -1.0, 0.0, 1.0, -1.0]]).view(1, 1, 3, 3)
    packed = GradientPass.from_sign(sign, torch.zeros(1, 10))
    assert packed.positive.nbytes == packed.negative.nbytes == 2  # 9 elements, one bit each, padded
    assert torch.equal(packed.sign(torch.device("cpu")), sign)


@pytest.mark.parametrize("direction", ["ascent", "descent"])
@pytest.mark.parametrize("eps", [0.01, 0.1])
@pytest.mark.parametrize("loss", ["logits", "keras"])
def test_one_pass_gives_fgsm_at_every_eps_and_direction_bit_for_bit(model_and_images, direction, eps, loss):
    model, images, labels = model_and_images
    config = AttackConfig(eps=eps, direction=direction, attack_loss=loss)
    # the pass is made once, at another eps and direction than the attack it serves
    found = gradient_pass(model, images, labels, AttackConfig(eps=0.5, direction="descent", attack_loss=loss),
                          "fp32", batch_size=8)
    expected = [fgsm_with_logits(model, to_unit(images[s:s + 8]), labels[s:s + 8], config) for s in (0, 8, 16)]
    assert torch.equal(found.adversarial(images, config), torch.cat([a for a, _ in expected]))
    assert torch.equal(found.logits, torch.cat([logits for _, logits in expected]))


def test_the_batch_is_part_of_the_pass_and_the_progress_sees_every_batch(model_and_images):
    model, images, labels = model_and_images
    seen = []
    found = gradient_pass(model, images, labels, AttackConfig(), "fp32", batch_size=8,
                          progress=lambda starts: seen.extend(starts) or starts)
    assert seen == [0, 8, 16] and found.shape == tuple(images.shape)
    assert np.array_equal(found.positive, gradient_pass(model, images, labels, AttackConfig(), "fp32", 8).positive)
