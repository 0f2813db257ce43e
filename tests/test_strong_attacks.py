"""The attacks beyond the paper: PGD and MI-FGSM against torchattacks' own to 1e-6, PGD's ball, seed and
restarts, AutoAttack against PGD and its library's APGD against ART's, and their config errors.

The torchattacks comparisons need `pip install --no-deps torchattacks==3.5.1` and are skipped without it.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbadv.config import AttackConfig, ConfigError, EvaluateConfig
from imbadv.core.attacks import ATTACKS, autoattack, ifgsm, mifgsm, pgd, run_attack
from imbadv.core.model import VGG, VGGSpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def torchattacks():
    return pytest.importorskip("torchattacks")


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()


def _vgg() -> nn.Module:
    torch.manual_seed(2)
    return VGG(VGGSpec(width=4, dense_units=32)).eval()


MODELS = {"linear": _linear, "vgg": _vgg}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build() for name, build in MODELS.items()}


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 32, 32, generator=g)
    images[:2, :, :4] = 0.0  # pixels at the ends of [0, 1], where the ball is cut
    images[2:4, :, :4] = 1.0
    return images, torch.randint(0, 10, (16,), generator=g)


def stripes(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes, each a colour and a stripe direction and period at a random phase, plus noise (as
    conftest's synthetic image folders): learnable in a second, with margins an eps of a few 255ths crosses."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images, labels = [], []
    for k in range(10):
        angle, period = math.pi * k / 10, 4.0 + 2.0 * (k % 3)
        colour = 0.5 + 0.15 * torch.cos(2 * math.pi * (k / 10 + torch.tensor([0.0, 1 / 3, 2 / 3])))
        phase = torch.rand(per_class, 1, 1, generator=g) * 2 * math.pi
        pattern = torch.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period + phase)
        noise = 0.2 * torch.randn(per_class, 3, 32, 32, generator=g)
        images.append((colour[None, :, None, None] + 0.12 * pattern[:, None] + noise).clamp(0.0, 1.0))
        labels.append(torch.full((per_class,), k))
    return torch.cat(images), torch.cat(labels)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained on 1,000 striped images (about 0.9 test accuracy) and 300 test images."""
    train_images, train_labels = stripes(100, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(5):
        order = torch.randperm(len(train_images))
        for start in range(0, len(order), 50):
            index = order[start:start + 50]
            loss = F.cross_entropy(model(train_images[index]), train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), *stripes(30, seed=1)


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def _assert_same_pixels(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to 1e-6 on at least 99.9% of pixel values. The projection rounds differently in the last bit
    (ours, as ifgsm's: min(max(x', x - eps), x + eps); torchattacks': x + clip(x' - x, -eps, eps)), so a
    near-zero gradient or momentum component may change sign and its pixel go its own way."""
    close = (ours - theirs).abs() <= 1e-6
    assert close.float().mean() >= 0.999, f"{(~close).sum().item()} of {close.numel()} pixel values differ"


def _assert_in_ball(adversarial: torch.Tensor, images: torch.Tensor, eps: float) -> None:
    assert (adversarial - images).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


# PGD ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("eps", "steps", "step_size"), [(0.03, 10, None), (0.01, 4, 0.004)])
@pytest.mark.parametrize("target", [None, 4])
def test_pgd_matches_torchattacks(torchattacks, models, batch, name, eps, steps, step_size, target):
    """Both draw the start as torch.empty(...).uniform_(-eps, eps) from a generator seeded the same; the
    targeted form is our descent on the target label's loss."""
    model, (images, labels) = models[name], batch
    config = AttackConfig(attack="pgd", eps=eps, steps=steps, step_size=step_size, attack_seed=7,
                          direction="ascent" if target is None else "descent", target_label=target)
    attack = torchattacks.PGD(model, eps=eps, alpha=config.iteration_step, steps=steps, random_start=True)
    theirs_labels = labels
    if target is not None:
        attack.set_mode_targeted_by_label(quiet=True)
        theirs_labels = torch.full_like(labels, target)
    torch.manual_seed(7)
    _assert_same_pixels(pgd(model, images, labels, config), attack(images, theirs_labels))


@pytest.mark.parametrize("eps", [0.01, 0.1])
@pytest.mark.parametrize(("restarts", "loss"), [(1, "logits"), (3, "logits"), (3, "keras")])
def test_pgd_stays_in_the_eps_ball_and_unit_range(models, batch, eps, restarts, loss):
    images, labels = batch
    config = AttackConfig(attack="pgd", eps=eps, steps=3, step_size=eps, restarts=restarts, attack_loss=loss)
    adversarial = run_attack(models["vgg"], images, labels, config)
    _assert_in_ball(adversarial, images, eps)
    assert not torch.equal(adversarial, images)


def test_pgd_seed_decides_the_start_and_nothing_else(models, batch):
    model, (images, labels) = models["vgg"], batch
    config = AttackConfig(attack="pgd", eps=0.03, steps=2, restarts=2, attack_seed=1)
    state = torch.get_rng_state()
    first = pgd(model, images, labels, config)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(pgd(model, images, labels, config), first)
    assert not torch.equal(pgd(model, images, labels, AttackConfig(attack="pgd", eps=0.03, steps=2, restarts=2,
                                                                  attack_seed=2)), first)
    torch.set_rng_state(state)


@pytest.mark.parametrize("attack", ["pgd", "mifgsm"])
def test_gradients_in_eval_mode_and_inputs_and_mode_left_alone(batch, attack):
    torch.manual_seed(2)
    model = VGG(VGGSpec(width=4, dense_units=32, dropout=0.5)).train()  # in train mode: random outputs
    images, labels = batch
    copy = images.clone()
    config = AttackConfig(attack=attack, eps=0.03, steps=2, restarts=2)
    first = run_attack(model, images, labels, config)
    assert model.training and torch.equal(images, copy)
    assert torch.equal(run_attack(model.eval(), images, labels, config), first)


def test_ifgsm_is_pgd_without_the_random_start(models, batch):
    model, (images, labels) = models["vgg"], batch
    config = AttackConfig(attack="ifgsm", eps=0.03, steps=3)
    assert torch.equal(ifgsm(model, images, labels, config), run_attack(model, images, labels, config))
    assert not torch.equal(ifgsm(model, images, labels, config), pgd(model, images, labels, config))


@pytest.mark.parametrize("direction", ["ascent", "descent"])
def test_restarts_never_undo_the_first_start(trained, direction):
    """Restart 1 is the one-restart run's start: an image it breaks stays broken, and every other image's
    loss only moves the attack's way."""
    model, images, labels = trained
    images, labels = images[::3], labels[::3]
    target = None if direction == "ascent" else 2
    one, three = (AttackConfig(attack="pgd", eps=3 / 255, steps=5, restarts=r, attack_seed=3, direction=direction,
                               target_label=target) for r in (1, 3))
    with torch.no_grad():
        single, multi = (model(pgd(model, images, labels, c)) for c in (one, three))
    goal = labels if target is None else torch.full_like(labels, target)
    sign = 1.0 if direction == "ascent" else -1.0
    reached = [(out.argmax(1) != goal) if target is None else (out.argmax(1) == goal) for out in (single, multi)]
    assert bool((reached[0] <= reached[1]).all())
    losses = [sign * F.cross_entropy(out, goal, reduction="none") for out in (single, multi)]
    kept = reached[0] == reached[1]
    assert bool((losses[1][kept] >= losses[0][kept] - 1e-6).all())


# MI-FGSM --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("decay", [1.0, 0.5])
@pytest.mark.parametrize("target", [None, 4])
def test_mifgsm_matches_torchattacks(torchattacks, models, batch, name, decay, target):
    model, (images, labels) = models[name], batch
    config = AttackConfig(attack="mifgsm", eps=0.03, steps=10, decay=decay,
                          direction="ascent" if target is None else "descent", target_label=target)
    attack = torchattacks.MIFGSM(model, eps=0.03, alpha=0.03 / 10, steps=10, decay=decay)
    theirs_labels = labels
    if target is not None:
        attack.set_mode_targeted_by_label(quiet=True)
        theirs_labels = torch.full_like(labels, target)
    _assert_same_pixels(mifgsm(model, images, labels, config), attack(images, theirs_labels))


def test_mifgsm_without_momentum_is_ifgsm(models, batch):
    model, (images, labels) = models["vgg"], batch
    config = AttackConfig(attack="mifgsm", eps=0.03, steps=4, decay=0.0)
    assert torch.equal(mifgsm(model, images, labels, config), ifgsm(model, images, labels, config))
    _assert_in_ball(run_attack(model, images, labels, AttackConfig(attack="mifgsm", eps=0.03)), images, 0.03)


# AutoAttack -----------------------------------------------------------------------------------

def test_autoattack_fast_is_at_least_as_strong_as_pgd(torchattacks, trained):
    model, images, labels = trained
    images, labels = images[::5], labels[::5]  # 60 images
    model.train()  # the attack evaluates in eval mode and gives the mode back
    state = torch.get_rng_state()
    config = AttackConfig(attack="autoattack", eps=4 / 255, aa_version="fast", attack_seed=0)
    adversarial = autoattack(model, images, labels, config)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    model.eval()
    _assert_in_ball(adversarial, images, 4 / 255)
    strong = _accuracy(model, adversarial, labels)
    baseline = _accuracy(model, pgd(model, images, labels, AttackConfig(attack="pgd", eps=4 / 255, steps=20)), labels)
    assert strong <= baseline < _accuracy(model, images, labels)
    assert torch.equal(autoattack(model, images, labels, config), adversarial)  # seeded


@pytest.mark.slow
def test_autoattack_standard_on_a_channels_last_model(torchattacks, models, batch):
    """FAB-T and Square run (an eps too small to break any image leaves them all the work), on a
    channels_last network and channels_last images, whose gradients torchattacks' FAB cannot `.view`."""
    images, labels = batch
    model = models["vgg"].to(memory_format=torch.channels_last)
    try:
        images = images[:2].contiguous(memory_format=torch.channels_last)
        labels = model(images).argmax(1)  # correctly classified: every attack runs on them
        adversarial = autoattack(model, images, labels, AttackConfig(attack="autoattack", eps=1e-4))
    finally:
        model.to(memory_format=torch.contiguous_format)
    _assert_in_ball(adversarial, images, 1e-4)
    assert torch.equal(model(adversarial).argmax(1), labels)


@pytest.mark.slow
def test_torchattacks_apgd_agrees_with_art_apgd(torchattacks, trained):
    """APGD-CE, AutoAttack's first attack, of torchattacks (ours) and of ART, 100 iterations and one random
    start each, on 300 images: robust accuracies within 1 point; our fast AutoAttack is no weaker."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    model, images, labels = trained
    eps = 4 / 255
    ours = torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=0, loss="ce", rho=0.75)
    classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                   clip_values=(0.0, 1.0), device_type="cpu")
    art = AutoProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                       nb_random_init=1, batch_size=len(images), loss_type="cross_entropy",
                                       verbose=False)
    clean = _accuracy(model, images, labels)
    theirs = _accuracy(model, torch.from_numpy(art.generate(images.numpy(), y=labels.numpy())), labels)
    torchattacks_apgd = _accuracy(model, ours(images, labels), labels)
    assert theirs < clean - 0.05  # the attack does something
    assert abs(torchattacks_apgd - theirs) <= 0.01
    fast = autoattack(model, images, labels, AttackConfig(attack="autoattack", eps=eps, aa_version="fast"))
    assert _accuracy(model, fast, labels) <= theirs + 0.01


def test_autoattack_without_torchattacks_names_the_install(monkeypatch, batch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails
    images, labels = batch
    with pytest.raises(ConfigError, match=r"pip install --no-deps torchattacks") as error:
        autoattack(_linear(), images, labels, AttackConfig(attack="autoattack"))
    assert "\n" not in str(error.value)


# Config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "message"), [
    ({"restarts": 0}, "restarts 0 is below 1"),
    ({"decay": -0.5}, "decay -0.5 is negative"),
    ({"aa_version": "plus"}, "unknown --aa-version 'plus': use standard or fast"),
    ({"attack": "cw"}, "unknown --attack 'cw'"),
    ({"attack": "autoattack", "direction": "descent"}, "autoattack is an ascent attack: drop --direction descent"),
    ({"attack": "autoattack", "target_label": 3}, "autoattack attacks the true label: drop --target-label"),
    ({"attack": "autoattack", "attack_loss": "keras"}, "drop --attack-loss keras"),
])
def test_bad_attack_settings_are_one_line_config_errors(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        AttackConfig(**values)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("source", ["balanced", "models:/imbadv-cifar10-balanced/1"])
def test_autoattack_from_another_models_gradients_is_refused_in_one_line(source):
    with pytest.raises(ConfigError, match="autoattack needs the target's own gradients") as error:
        EvaluateConfig(attack="autoattack", source=source)
    assert "\n" not in str(error.value) and "--attack pgd" in str(error.value)
    assert EvaluateConfig(attack="autoattack").source == "self"


def test_new_settings_have_defaults_and_reach_the_attack_part_of_an_evaluation():
    config = AttackConfig()
    assert (config.restarts, config.attack_seed, config.decay, config.aa_version) == (1, 0, 1.0, "standard")
    assert (config.steps, config.iteration_step) == (10, config.eps / 10)
    evaluation = EvaluateConfig(attack="pgd", steps=20, step_size=0.0025, restarts=2, attack_seed=5)
    assert evaluation.attack_config() == AttackConfig(attack="pgd", steps=20, step_size=0.0025, restarts=2,
                                                      attack_seed=5)
    assert set(ATTACKS) == {"fgsm", "ifgsm", "pgd", "mifgsm", "autoattack"}
