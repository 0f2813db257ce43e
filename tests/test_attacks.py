"""Gradient-sign attacks (section 3.2): FGSM formula, clipping, directions, iterative FGSM, eval-mode
gradients, and equivalence with ART's FastGradientMethod."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbadv.core.attacks import fgsm, fgsm_with_logits, ifgsm, input_gradient, run_attack
from imbadv.config import AttackConfig, ConfigError
from imbadv.core.model import VGG, VGGSpec
from imbadv.tracking.provenance import CODE_PARTS

N_IMAGES = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _vgg(**kwargs) -> VGG:
    torch.manual_seed(2)
    return VGG(VGGSpec(width=4, dense_units=32, **kwargs)).eval()


MODELS = {"linear": _linear, "mlp": _mlp, "vgg": _vgg}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build() for name, build in MODELS.items()}


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N_IMAGES, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (N_IMAGES,), generator=g)
    return images, labels


def _reference_grad(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """grad_x of the mean cross-entropy, computed here without the package."""
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    return x.grad.detach()


def _losses(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(images), labels, reduction="none")


# (a) the FGSM formula -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("direction", ["ascent", "descent"])
@pytest.mark.parametrize("eps", [0.01, 0.1])
def test_fgsm_matches_formula(models, batch, name, direction, eps):
    model = models[name]
    images, labels = batch
    grad = _reference_grad(model, images, labels)
    sign = 1.0 if direction == "ascent" else -1.0
    expected = (images + sign * eps * grad.sign()).clamp(0.0, 1.0)
    adversarial = fgsm(model, images, labels, AttackConfig(eps=eps, direction=direction))
    torch.testing.assert_close(adversarial, expected, rtol=0, atol=1e-7)
    assert not torch.equal(adversarial, images)
    # the input is not modified in place
    assert torch.equal(images, batch[0])


def test_input_gradient_is_mean_cross_entropy_gradient(models, batch):
    model = models["vgg"]
    images, labels = batch
    grad, logits = input_gradient(model, images, labels)
    torch.testing.assert_close(grad, _reference_grad(model, images, labels), rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images))
    assert not logits.requires_grad and not grad.requires_grad


def test_fgsm_with_logits_returns_clean_logits(models, batch):
    model = models["mlp"]
    images, labels = batch
    adversarial, logits = fgsm_with_logits(model, images, labels, AttackConfig(eps=0.02))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images))
    torch.testing.assert_close(adversarial, fgsm(model, images, labels, AttackConfig(eps=0.02)), rtol=0, atol=0)


def test_target_label_replaces_true_label_in_gradient(models, batch):
    model = models["linear"]
    images, labels = batch
    target = torch.full_like(labels, 4)
    grad = _reference_grad(model, images, target)
    expected = (images - 0.02 * grad.sign()).clamp(0, 1)
    config = AttackConfig(eps=0.02, direction="descent", target_label=4)
    torch.testing.assert_close(fgsm(model, images, labels, config), expected, rtol=0, atol=1e-7)


# (b) clipping ---------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["ascent", "descent"])
@pytest.mark.parametrize("eps", [0.03, 0.2])
def test_fgsm_clips_to_unit_interval(models, batch, direction, eps):
    model = models["linear"]  # every pixel has a non-zero gradient
    images = batch[0].clone()
    labels = batch[1]
    images[:, :, :8] = 0.0
    images[:, :, 8:16] = 1.0
    images[:, :, 16:20] = eps / 2  # inside eps of 0: a downward step is cut short
    step = (1.0 if direction == "ascent" else -1.0) * _reference_grad(model, images, labels).sign()
    assert (step != 0).all()

    adversarial = fgsm(model, images, labels, AttackConfig(eps=eps, direction=direction))
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0

    at_zero, at_one = images == 0.0, images == 1.0
    down, up = step < 0, step > 0
    for mask in (at_zero & down, at_one & up, at_zero & up, at_one & down):
        assert mask.any(), "the synthetic images must cover each clipping case"
    assert (adversarial[at_zero & down] == 0.0).all()
    assert (adversarial[at_one & up] == 1.0).all()
    torch.testing.assert_close(adversarial[at_zero & up], torch.full_like(adversarial[at_zero & up], eps))
    torch.testing.assert_close(adversarial[at_one & down], torch.full_like(adversarial[at_one & down], 1 - eps))
    near_zero = (images == eps / 2) & down
    assert near_zero.any() and (adversarial[near_zero] == 0.0).all()

    interior = (images + step * eps >= 0.0) & (images + step * eps <= 1.0)
    assert interior.float().mean() > 0.5
    perturbation = adversarial - images
    torch.testing.assert_close(perturbation[interior], (step * eps)[interior], rtol=0, atol=1e-6)


# (c) descent and targeted descent ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_descent_lowers_and_ascent_raises_true_label_loss(models, batch, name):
    model = models[name]
    images, labels = batch
    clean = _losses(model, images, labels)
    lowered = _losses(model, fgsm(model, images, labels, AttackConfig(eps=0.01, direction="descent")), labels)
    raised = _losses(model, fgsm(model, images, labels, AttackConfig(eps=0.01, direction="ascent")), labels)
    # each image's loss depends only on that image, so the mean-loss gradient acts per image
    assert (lowered < clean).all()
    assert (raised > clean).all()


def test_descent_moves_opposite_to_ascent(models, batch):
    model = models["linear"]
    images = batch[0].clamp(0.1, 0.9)  # away from the clipping range
    labels = batch[1]
    up = fgsm(model, images, labels, AttackConfig(eps=0.05)) - images
    down = fgsm(model, images, labels, AttackConfig(eps=0.05, direction="descent")) - images
    torch.testing.assert_close(up, -down, rtol=0, atol=1e-6)


@pytest.mark.parametrize("target", [0, 7])
@pytest.mark.parametrize("attack", ["fgsm", "ifgsm"])
def test_targeted_descent_raises_target_probability(models, batch, target, attack):
    model = models["mlp"]
    images, labels = batch
    config = AttackConfig(attack=attack, eps=0.02, direction="descent", target_label=target, steps=3)
    adversarial = run_attack(model, images, labels, config)
    with torch.no_grad():
        before = torch.softmax(model(images), 1)[:, target]
        after = torch.softmax(model(adversarial), 1)[:, target]
    assert (after > before).all()


# (d) iterative FGSM ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edge_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch[0].clone()
    images[:, 0, :4] = 0.0
    images[:, 1, :4] = 1.0
    return images, batch[1]


@pytest.mark.parametrize("direction", ["ascent", "descent"])
@pytest.mark.parametrize("steps,step_size", [(5, None), (4, 0.02), (3, 0.05)])
def test_ifgsm_stays_in_eps_ball_and_unit_interval(models, edge_batch, direction, steps, step_size):
    model = models["vgg"]
    images, labels = edge_batch
    eps = 0.03
    config = AttackConfig(attack="ifgsm", eps=eps, steps=steps, step_size=step_size, direction=direction)
    adversarial = ifgsm(model, images, labels, config)
    assert (adversarial - images).abs().max() <= eps + 1e-7
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert (adversarial - images).abs().max() > eps / 2  # it did move


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("direction", ["ascent", "descent"])
@pytest.mark.parametrize("step_size", [None, 0.03])
def test_ifgsm_one_step_of_eps_equals_fgsm(models, edge_batch, name, direction, step_size):
    model = models[name]
    images, labels = edge_batch
    one_step = AttackConfig(attack="ifgsm", eps=0.03, steps=1, step_size=step_size, direction=direction)
    assert one_step.iteration_step == 0.03
    expected = fgsm(model, images, labels, AttackConfig(eps=0.03, direction=direction))
    torch.testing.assert_close(ifgsm(model, images, labels, one_step), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("steps,step_size", [(10, None), (10, 0.0075), (5, 0.03)])
def test_ifgsm_loss_at_least_fgsm(models, batch, steps, step_size):
    # On a nonlinear model the iterative attack should find at least FGSM's loss; allow 5% of
    # FGSM's loss increase as slack so the check does not hinge on one image's last digits.
    model = models["mlp"]
    images, labels = batch
    eps = 0.03
    clean = _losses(model, images, labels).mean()
    one = _losses(model, fgsm(model, images, labels, AttackConfig(eps=eps)), labels).mean()
    many = _losses(model, ifgsm(model, images, labels,
                                AttackConfig(attack="ifgsm", eps=eps, steps=steps, step_size=step_size)),
                   labels).mean()
    assert one > clean
    assert many - clean >= 0.95 * (one - clean)


def test_ifgsm_does_not_modify_input(models, edge_batch):
    images, labels = edge_batch
    copy = images.clone()
    ifgsm(models["vgg"], images, labels, AttackConfig(attack="ifgsm", eps=0.03, steps=2))
    assert torch.equal(images, copy)


def test_run_attack_dispatches(models, batch):
    model = models["mlp"]
    images, labels = batch
    fg = AttackConfig(attack="fgsm", eps=0.03)
    it = AttackConfig(attack="ifgsm", eps=0.03, steps=4, step_size=0.01)
    assert torch.equal(run_attack(model, images, labels, fg), fgsm(model, images, labels, fg))
    assert torch.equal(run_attack(model, images, labels, it), ifgsm(model, images, labels, it))
    assert not torch.equal(run_attack(model, images, labels, fg), run_attack(model, images, labels, it))


# (e) gradients in eval mode -------------------------------------------------------------------

@pytest.mark.parametrize("attack", ["fgsm", "ifgsm"])
def test_gradient_taken_in_eval_mode_and_training_flag_restored(batch, attack):
    model = _vgg(dropout=0.5)
    images, labels = batch
    config = AttackConfig(attack=attack, eps=0.03, steps=2)
    # sanity: in train mode this model is random
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(images), model(images))

    first = run_attack(model, images, labels, config)
    assert model.training
    second = run_attack(model, images, labels, config)
    assert model.training
    assert torch.equal(first, second)

    model.eval()
    in_eval = run_attack(model, images, labels, config)
    assert not model.training
    assert torch.equal(first, in_eval)


def test_input_gradient_restores_flag_of_submodules(batch):
    model = _vgg(dropout=0.5)
    model.train()
    input_gradient(model, *batch)
    assert all(m.training for m in model.modules())
    model.eval()
    input_gradient(model, *batch)
    assert not any(m.training for m in model.modules())


def test_attack_leaves_parameter_gradients_alone(batch):
    model = _vgg()
    fgsm(model, *batch, AttackConfig(eps=0.01))
    assert all(p.grad is None for p in model.parameters())


# (f) eps = 0 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", ["fgsm", "ifgsm"])
@pytest.mark.parametrize("direction", ["ascent", "descent"])
def test_zero_eps_leaves_images_unchanged(models, edge_batch, attack, direction):
    images, labels = edge_batch
    config = AttackConfig(attack=attack, eps=0.0, steps=3, direction=direction)
    assert torch.equal(run_attack(models["vgg"], images, labels, config), images)


# (g) equivalence with ART -----------------------------------------------------------------------

ART_IMAGES = 64


@pytest.fixture(scope="module")
def art_setup():
    pytest.importorskip("art")
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(123)
    model = VGG(VGGSpec(width=4, dense_units=32)).eval()
    g = torch.Generator().manual_seed(7)
    images = torch.rand(ART_IMAGES, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (ART_IMAGES,), generator=g)
    classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                                   nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    return model, images, labels, classifier


def _art_fgsm(classifier, images: torch.Tensor, y: np.ndarray, eps: float, targeted: bool) -> np.ndarray:
    from art.attacks.evasion import FastGradientMethod

    # batch_size = all images: ART then takes the gradient of the mean loss over the same batch
    attack = FastGradientMethod(estimator=classifier, eps=eps, norm=np.inf, targeted=targeted,
                                batch_size=len(images))
    return attack.generate(images.numpy(), y=y)


@pytest.mark.parametrize("eps", [0.01, 0.05])
def test_fgsm_ascent_matches_art(art_setup, eps):
    model, images, labels, classifier = art_setup
    one_hot = np.eye(10, dtype=np.float32)[labels.numpy()]
    expected = _art_fgsm(classifier, images, one_hot, eps, targeted=False)
    ours = fgsm(model.eval(), images, labels, AttackConfig(eps=eps)).numpy()
    assert expected.shape == ours.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert np.abs(ours - images.numpy()).max() == pytest.approx(eps, abs=1e-6)


@pytest.mark.parametrize("target", [3, 9])
def test_targeted_descent_matches_art(art_setup, target):
    model, images, labels, classifier = art_setup
    eps = 0.02
    one_hot_target = np.eye(10, dtype=np.float32)[np.full(len(images), target)]
    expected = _art_fgsm(classifier, images, one_hot_target, eps, targeted=True)
    config = AttackConfig(eps=eps, direction="descent", target_label=target)
    ours = fgsm(model.eval(), images, labels, config).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    # and it is not the untargeted attack
    untargeted = fgsm(model, images, labels, AttackConfig(eps=eps)).numpy()
    assert not np.allclose(ours, untargeted)


# (h) AttackConfig validation --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"eps": -0.01},
    {"eps": 1.01},
    {"steps": 0},
    {"steps": -3},
    {"attack": "cw"},
    {"direction": "sideways"},
    {"step_size": 0.0},
    {"step_size": -0.1},
    {"target_label": -1},
])
def test_attack_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        AttackConfig(**kwargs)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        AttackConfig(eps=2.0)


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"eps": 1.0}, {"steps": 1}, {"target_label": 0}])
def test_attack_config_accepts_edge_values(kwargs):
    AttackConfig(**kwargs)


def test_iteration_step_defaults_to_eps_over_steps():
    assert AttackConfig(eps=0.03, steps=10).iteration_step == pytest.approx(0.003)
    assert AttackConfig(eps=0.03, steps=10, step_size=0.01).iteration_step == 0.01
    assert AttackConfig().eps == 0.01  # the paper's budget (section 3.2)


def test_keras_loss_leaves_an_image_the_model_is_sure_of_unperturbed_and_follows_the_logits_loss_elsewhere():
    from imbadv.config import AttackConfig
    from imbadv.core.attacks import fgsm, keras_crossentropy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    images = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        model[1].weight.uniform_(-0.01, 0.01)
        model[1].bias.zero_()
        model[1].weight[0] = 20.0 / images[0].sum()  # class 0 leads by about 20 logits: p(0) > 1 - 1e-7
    assert torch.softmax(model(images), 1)[:, 0].min() > 1 - 1e-7
    labels = torch.tensor([0, 0])
    keras, logits = AttackConfig(attack_loss="keras"), AttackConfig()
    assert torch.equal(fgsm(model, images, labels, keras), images)  # the clipped loss has zero gradient here
    assert not torch.equal(fgsm(model, images, labels, logits), images)

    unsure = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    out = unsure(images)
    assert keras_crossentropy(out, labels).item() == pytest.approx(F.cross_entropy(out, labels).item(), rel=1e-5)
    assert torch.equal(fgsm(unsure, images, labels, keras), fgsm(unsure, images, labels, logits))


def test_a_keras_loss_study_attacks_with_it_and_reuses_the_same_trainings():
    from imbadv.study.config import StudyConfig
    from imbadv.study.plan import plan

    keras = plan(StudyConfig(preset="smoke", classes="3", attack_loss="keras"), 10, "d", dict.fromkeys(CODE_PARTS, "c"))
    logits = plan(StudyConfig(preset="smoke", classes="3"), 10, "d", dict.fromkeys(CODE_PARTS, "c"))
    assert {dict(s.options)["attack_loss"] for s in keras if s.entry == "evaluate"} == {"keras"}
    assert [s.key for s in keras if s.entry == "train"] == [s.key for s in logits if s.entry == "train"]
