"""The fast paths against plain references: exact ones bit-identical, layout ones within fp32 rounding.

Exact: images held as one uint8 tensor and indexed per batch, against a DataLoader feeding the same
batches as float tensors. Within fp32 rounding: the evaluation batch size, channels_last and
torch.compile.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from imbadv.tracking import provenance
from imbadv.core.attacks import fgsm
from imbadv.config import (
    PRESETS,
    AttackConfig,
    ModelSelection,
    TrainConfig,
    resolve_evaluate_config,
    resolve_train_config,
)
from imbadv.core import inference
from imbadv.study.config import StudyConfig
from imbadv.core.inference import predict_logits, set_layout
from imbadv.core.model import VGG, VGGSpec
from imbadv.core.optim import keras_rmsprop
from imbadv.core.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = dataclasses.replace(resolve_train_config(preset="smoke"), epochs=2, patience=2)


def _model() -> VGG:
    torch.manual_seed(0)
    return VGG(VGGSpec(width=SMOKE.width, dense_units=SMOKE.dense_units))


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def _dataloader_training(images: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> VGG:
    """A plain loop: float images through a DataLoader, in the order the trainer draws."""
    model = _model()
    optimizer, scheduler = keras_rmsprop(model.parameters(), config.lr, config.rho, config.optimizer_eps,
                                         config.decay)
    generator = torch.Generator().manual_seed(config.init_seed)  # the trainer's batch order
    dataset = TensorDataset(images.float() / 255.0, labels)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=generator).tolist()
        for batch, targets in DataLoader(dataset, batch_size=config.batch_size, sampler=order):
            loss = F.cross_entropy(model(batch), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model


def test_device_tensor_batches_match_a_dataloader_loop_bit_for_bit():
    images, labels = _images(120)
    config = dataclasses.replace(SMOKE, epochs=1)  # one epoch: the best epoch is the last one
    ours = _model()
    train(ours, images, labels, images[:8], labels[:8], config)
    reference = _dataloader_training(images, labels, config)
    pairs = zip(ours.state_dict().items(), reference.state_dict().values(), strict=True)
    for (name, ours_value), reference_value in pairs:
        assert torch.equal(ours_value, reference_value), name


def test_evaluation_batch_size_keeps_predictions_and_logits_to_rounding():
    """Kernels are picked by batch shape, so logits may differ in the last bits, predictions not."""
    model = _model().eval()
    images, _ = _images(64, seed=1)
    whole = predict_logits(model, images, batch_size=64)
    for batch_size in (1, 7, 1000):
        batched = predict_logits(model, images, batch_size=batch_size)
        torch.testing.assert_close(batched, whole, rtol=0, atol=1e-5)
        assert torch.equal(batched.argmax(1), whole.argmax(1)), batch_size


def _assert_within_rmsprop_step_bound(fast_option: dict) -> None:
    """RMSprop divides by the gradient's running RMS, so a rounding-level difference in a near-zero
    gradient can move a weight by up to lr per step: weights stay within lr x steps, predictions agree."""
    images, labels = _images(120)
    config = dataclasses.replace(SMOKE, epochs=1)
    default, fast = _model(), _model()
    train(default, images, labels, images[:16], labels[:16], config)
    train(fast, images, labels, images[:16], labels[:16], dataclasses.replace(config, **fast_option))
    bound = config.lr * len(images) / config.batch_size
    for (name, a), b in zip(default.state_dict().items(), fast.state_dict().values(), strict=True):
        assert b.is_contiguous(), f"{name} left in channels_last"
        assert (a - b).abs().max().item() <= bound, name
    agree = (predict_logits(default, images, 64).argmax(1) == predict_logits(fast, images, 64).argmax(1))
    assert agree.float().mean().item() >= 0.95


def test_channels_last_training_stays_within_rmsprop_step_bound_and_returns_the_default_layout():
    _assert_within_rmsprop_step_bound({"channels_last": True})


@pytest.mark.slow
def test_compiled_training_stays_within_rmsprop_step_bound():
    _assert_within_rmsprop_step_bound({"torch_compile": True})


def test_channels_last_attack_gives_the_same_adversarial_images():
    model = _model().eval()
    images, labels = _images(64, seed=2)
    x = images.float() / 255.0
    config = AttackConfig(eps=0.01)
    default = fgsm(model, x, labels, config)
    fast = fgsm(set_layout(model, channels_last=True), x, labels, config)
    equal = torch.isclose(fast, default, rtol=0, atol=1e-6).float().mean().item()
    assert equal >= 0.999  # only a near-zero gradient's sign may flip


def test_cpu_preset_turns_channels_last_on_and_paper_keeps_the_defaults():
    assert resolve_train_config(preset="cpu").channels_last is True
    paper = resolve_train_config(preset="paper")
    assert (paper.channels_last, paper.torch_compile, paper.precision) == (False, False, "fp32")
    fast = resolve_train_config(preset="paper-fast")
    assert (fast.channels_last, fast.torch_compile, fast.precision) == (True, True, "bf16")
    assert (fast.width, fast.lr, fast.batch_size) == (paper.width, paper.lr, paper.batch_size)
    assert resolve_train_config(preset="cpu", channels_last=False).channels_last is False


def test_evaluation_takes_the_presets_layout_but_not_its_batch_or_precision():
    cpu = resolve_evaluate_config(preset="cpu")
    assert cpu.channels_last is True
    assert (cpu.batch_size, cpu.precision) == (500, "fp32")  # the training batch and bf16 are not shared
    fast = resolve_evaluate_config(preset="paper-fast")
    assert (fast.channels_last, fast.precision) == (True, "fp32")
    assert resolve_evaluate_config(preset="paper").channels_last is False
    assert resolve_evaluate_config(preset="cpu", channels_last=False).channels_last is False


def test_code_version_follows_the_package_source_only(tmp_path):
    package = tmp_path / "imbadv"
    package.mkdir()
    (package / "train.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    before = provenance.code_version(package)
    (tmp_path / "README.md").write_text("more docs\n")
    assert provenance.code_version(package) == before
    (package / "train.py").write_text("x = 2\n")
    assert provenance.code_version(package) != before
    assert len(provenance.code_version(provenance.PACKAGE_DIR)) == 16


@pytest.mark.parametrize("config_class", [ModelSelection, StudyConfig])
def test_every_preset_is_named_in_the_preset_help(config_class):
    help_words = set(re.findall(r"[\w-]+", config_class.__dataclass_fields__["preset"].metadata["help"]))
    missing = [name for name in PRESETS if name not in help_words]
    assert not missing, f"--preset help does not name {missing}"


@pytest.mark.parametrize("native", [True, False])
def test_bf16_without_bf16_units_is_named(monkeypatch, capsys, native):
    """bf16 on a CPU without AMX or AVX512-BF16 runs slow reference kernels: the run is tagged and warned."""
    monkeypatch.setattr(inference, "bf16_is_native", lambda device: native)
    assert inference.check_bf16(torch.device("cpu"), "bf16") is native
    warning = capsys.readouterr().err
    assert ("no bf16 matrix units" in warning and "--precision fp32" in warning) is not native
    assert inference.check_bf16(torch.device("cpu"), "fp32") is None and capsys.readouterr().err == ""


def test_bf16_native_follows_onednn_on_the_cpu():
    assert inference.bf16_is_native(torch.device("cpu")) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
