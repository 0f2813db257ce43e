"""Typed configs for the jobs (train, evaluate), the named presets, and the checks they share.

Every default is the paper's where the paper states one (Possas and Zhou, section 3); the others
are marked "not in the paper". CLI options, MLproject parameters and presets are views of these
dataclasses: the defaults live here and nowhere else (the study's: `imbadv.study.config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

Sampling = Literal["balanced", "under", "over", "longtail", "step", "natural"]
Precision = Literal["fp32", "bf16"]
AttackName = Literal["fgsm", "ifgsm", "pgd", "mifgsm", "autoattack"]
Direction = Literal["ascent", "descent"]
Init = Literal["keras", "torch"]
AttackLoss = Literal["logits", "keras"]
AutoAttackVersion = Literal["standard", "fast"]
Stopping = Literal["train-loss", "val-loss"]
Augment = Literal["none", "keras", "crop"]
Loss = Literal["ce", "cb", "la", "bs"]
Resample = Literal["none", "oversample"]


# The largest share of test images on which onnxruntime may disagree with PyTorch before an ONNX
# export is judged wrong (not in the paper): training refuses to register such a model, an evaluation fails.
MAX_ONNX_DISAGREEMENT = 0.001
# Images per batch of inference without gradients (not in the paper): a training's validation and
# test passes, and onnxruntime's cross-check of a model in training and in evaluation alike.
INFERENCE_BATCH = 1000


class ConfigError(ValueError):
    """A bad configuration value; the message names the problem and the fix."""


# CIFAR-10's labels in its own order (0-9); a class may be named by these wherever an id is asked for.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def parse_class_id(value: str | int | None, class_names: Sequence[str] = CIFAR10_CLASSES) -> int | None:
    """A class id from an id (`3`) or one of the dataset's `class_names`, any case (CIFAR-10's `cat` by
    default; another dataset's names are known once its folders are read: `imbadv.core.data.class_id_of`)."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if tuple(class_names) == CIFAR10_CLASSES:
        raise ConfigError(f"unknown class {value!r}: pass a class id (0-9 for CIFAR-10) or a CIFAR-10 class name "
                          f"({', '.join(CIFAR10_CLASSES)})")
    raise ConfigError(f"unknown class {value!r}: pass a class id (0-{len(class_names) - 1}) or one of this "
                      f"dataset's class names ({', '.join(class_names)})")


# Section 3.1: a class of 5,000 images cut to 1,000, the imbalance ratio of every paper model.
PAPER_RATIO = 5.0
CLASS_SAMPLINGS = ("under", "over")  # the profiles that single out one class (--class-id)
RATIO_SAMPLINGS = ("under", "over", "longtail", "step")  # the profiles that take --ratio


def model_label(sampling: str, class_id: int | None, ratio: float | None = None, loss: str = "ce",
                resample: str = "none") -> str:
    """The model in run names, registry names and messages: `balanced`, `natural`, `under-c<k>` and
    `over-c<k>` at the paper's ratio, `under-c<k>-r<R>` at another, `longtail-r<R>`, `step-r<R>`; a
    remedy for imbalance adds its name (`under-c3-cb`, `longtail-r100-oversample`)."""
    label = sampling if class_id is None else f"{sampling}-c{class_id}"
    if sampling in RATIO_SAMPLINGS and (sampling not in CLASS_SAMPLINGS or ratio not in (None, PAPER_RATIO)):
        label += f"-r{PAPER_RATIO if ratio is None else ratio:g}"
    return label + ("" if loss == "ce" else f"-{loss}") + ("" if resample == "none" else f"-{resample}")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when the message is empty): what a user sees."""
    return str(error).splitlines()[0] if str(error).strip() else type(error).__name__


def check_choices(config: Any) -> None:
    """Refuse any field typed as a Literal whose value is not one of its choices, naming them."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        hint, value = hints[item.name], getattr(config, item.name)
        if get_origin(hint) is Literal and value not in get_args(hint):
            choices = [str(c) for c in get_args(hint)]
            listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
            raise ConfigError(f"unknown --{item.name.replace('_', '-')} {value!r}: use {listed}")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def default_cache_dir() -> str:
    """Cache folder for downloads, unpacked archives and decoded arrays (IMBADV_CACHE overrides)."""
    return os.environ.get("IMBADV_CACHE", str(Path.home() / ".cache" / "imbadv"))


def canonical_data(data: str) -> str:
    """`data` as the runs record it: a local path as its absolute real path, so that a relative path, `..`,
    `~` or a symlink naming the same archive give one training identity (train and step keys hash it); a
    name such as `cifar10`, or a path that does not exist (refused when read), unchanged."""
    path = Path(data).expanduser()
    return str(path.resolve()) if data != "cifar10" and path.exists() else data


@dataclass(frozen=True)
class ModelSelection:
    """Which model of the study: dataset, sampling, class, preset and seed (section 3.1)."""

    data: str = field(default="cifar10", metadata=_help(
        "Data source: 'cifar10' (torchvision download), an image-folder directory with "
        "train/<class>/ and test/<class>/, or a .tar.gz of one."))
    sampling: Sampling = field(default="balanced", metadata=_help(
        "Training set: 'balanced' (every class at majority-count), 'under' (class c cut to majority-count / "
        "ratio), 'over' (class c kept, every other class cut to majority-count / ratio), and beyond the paper "
        "'longtail' (class i keeps majority-count * ratio^(-i/(classes-1)), Cui et al. 2019), 'step' (the last "
        "half of the classes at majority-count / ratio, Buda et al. 2018) or 'natural' (every training image, "
        "as the dataset has it)."))
    class_id: int | None = field(default=None, metadata=_help(
        "The under- or over-sampled class: a 0-based label or a class name of the dataset (CIFAR-10's cat, "
        "GTSRB's stop); required unless sampling=balanced."))
    ratio: float | None = field(default=None, metadata=_help(
        "Imbalance ratio of under, over, longtail and step: the largest class's count over the smallest's "
        "(default: section 3.1's 5, a class of 5,000 cut to 1,000); balanced and natural take none."))
    loss: Loss = field(default="ce", metadata=_help(
        "Training loss: 'ce' (cross-entropy, the paper's), or a remedy for imbalance (not in the paper): 'cb' "
        "(class-balanced weights, Cui et al. 2019; --cb-beta), 'la' (logit-adjusted, Menon et al. 2021; --la-tau) "
        "or 'bs' (Balanced Softmax, Ren et al. 2020)."))
    resample: Resample = field(default="none", metadata=_help(
        "'none' (the paper's), or 'oversample': each epoch every class drawn up to the largest class's count, "
        "with replacement (a remedy, not in the paper; not the paper's 'over' sampling, which cuts the others)."))
    preset: str = field(default="paper", metadata=_help(
        "Named set of config values: 'paper' (the paper's, fp32), 'paper-fast' (paper plus a GPU's "
        "fast paths), 'paper-group' (paper-fast without torch.compile, for training groups), 'paper-aug' "
        "(paper plus the Keras CIFAR-10 example's augmentation and dropout), 'paper-aug-fast' (paper-aug "
        "plus a GPU's fast paths), 'cpu' (a 2-core machine) or 'smoke' (seconds, for tests)."))
    seed: int = field(default=0, metadata=_help(
        "Seed for sampling; initialisation and shuffling take a seed derived from it, the sampling and the class "
        "(see --shared-init)."))
    cache_dir: str = field(default_factory=default_cache_dir, metadata=_help(
        "Cache for downloads and decoded arrays (default: $IMBADV_CACHE, else ~/.cache/imbadv)."))
    device: str = field(default="auto", metadata=_help("'auto' (CUDA when present), 'cpu' or 'cuda'."))

    def __post_init__(self) -> None:
        check_choices(self)
        check_preset(self.preset)
        object.__setattr__(self, "data", canonical_data(self.data))
        if self.sampling not in CLASS_SAMPLINGS and self.class_id is not None:
            raise ConfigError(f"sampling={self.sampling} takes no class id: drop --class-id or use under/over")
        if self.sampling in CLASS_SAMPLINGS and self.class_id is None:
            raise ConfigError(f"sampling={self.sampling} needs a class: pass --class-id (0-9 for CIFAR-10)")
        if self.sampling not in RATIO_SAMPLINGS and self.ratio is not None:
            raise ConfigError(f"sampling={self.sampling} takes no ratio: drop --ratio or use "
                              f"{', '.join(RATIO_SAMPLINGS)}")
        if self.sampling in RATIO_SAMPLINGS:
            ratio = PAPER_RATIO if self.ratio is None else float(self.ratio)
            if not ratio > 1.0:
                raise ConfigError(f"ratio {self.ratio} is not above 1 (ratio 1 is the balanced model): pass "
                                  "--sampling balanced, or e.g. --ratio 20")
            object.__setattr__(self, "ratio", ratio)  # one identity for the paper's ratio, given or not
        if isinstance(self.class_id, str):
            raise ConfigError(f"class id {self.class_id!r} is a name: pass its label, e.g. "
                              "imbadv.core.data.class_id_of(name, data, cache_dir)")
        if self.class_id is not None and self.class_id < 0:
            raise ConfigError(f"class id {self.class_id} is negative: pass a label from 0 to classes-1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}: use auto, cpu or cuda")


@dataclass(frozen=True)
class TrainConfig(ModelSelection):
    """One training job: imbalanced sampling, the adapted VGG and Keras-style RMSprop (section 3.1)."""

    majority_count: int = field(default=5000, metadata=_help(
        "Training images kept per majority class (section 3.1: 5,000, all of CIFAR-10's); the others keep "
        "majority-count / ratio (see --sampling)."))
    val_fraction: float = field(default=0.1, metadata=_help(
        "Share of each class's sampled images held out, for the validation metrics and --stopping val-loss "
        "(not in the paper): at 0.1 a 5,000-image class trains on 4,500 and a 1,000-image class on 900. 0: "
        "nothing held out, every sampled image trains."))
    width: int = field(default=64, metadata=_help(
        "Filters of the first block; blocks use width, 2*width, 4*width (VGG: 64)."))
    dense_units: int = field(default=512, metadata=_help("Units of the dense layer (section 3.1: 512)."))
    dropout: float = field(default=0.0, metadata=_help("Dropout before the dense layers (not in the paper)."))
    block_dropout: float = field(default=0.0, metadata=_help(
        "Dropout after each pooled conv block (not in the paper; the Keras CIFAR-10 example: 0.25)."))
    dense_dropout: float = field(default=0.0, metadata=_help(
        "Dropout after the dense layer only (not in the paper; the Keras CIFAR-10 example: 0.5)."))
    batch_norm: bool = field(default=False, metadata=_help("Batch-norm after each conv (not in the paper)."))
    augment: Augment = field(default="none", metadata=_help(
        "Training-image augmentation on the device (not in the paper): 'none', 'keras' (the Keras CIFAR-10 "
        "example's random shifts of up to 10% with nearest fill and horizontal flips) or 'crop' (pad 4, "
        "random crop, horizontal flip)."))
    batch_size: int = field(default=32, metadata=_help("Training batch (not in the paper; Keras' default 32)."))
    lr: float = field(default=1e-4, metadata=_help("RMSprop learning rate (section 3.1: 1e-4)."))
    rho: float = field(default=0.9, metadata=_help("RMSprop decay of the squared-gradient average (Keras: 0.9)."))
    optimizer_eps: float = field(default=1e-8, metadata=_help(
        "RMSprop epsilon (Keras 2.0.0 to 2.1.2, the authors' Keras of 2017: 1e-8; 1e-7 from Keras 2.1.3, "
        "January 2018)."))
    decay: float = field(default=1e-5, metadata=_help(
        "Per-update learning-rate decay, lr / (1 + decay * t) (section 3.1: 1e-5, Keras 2 semantics)."))
    init: Init = field(default="keras", metadata=_help(
        "Initial conv and dense weights: 'keras' (Keras 2's glorot_uniform kernels and zero biases, the "
        "authors' stack) or 'torch' (torch's kaiming_uniform(a=sqrt(5)) and uniform biases)."))
    epochs: int = field(default=100, metadata=_help(
        "Cap on epochs; training stops earlier by the --stopping rule."))
    stopping: Stopping = field(default="train-loss", metadata=_help(
        "When a model has trained enough. 'train-loss' (the paper's 'until convergence', section 3.1): "
        "stop once the training loss has not fallen by more than --min-delta for --patience epochs, and keep "
        "the last weights. 'val-loss': stop once the held-out loss has not "
        "fallen for --patience epochs, and keep the weights of its lowest epoch (with --val-fraction 0: every "
        "epoch runs)."))
    patience: int = field(default=5, metadata=_help(
        "Epochs without a better monitored loss (see --stopping) before stopping."))
    min_delta: float = field(default=1e-3, metadata=_help(
        "Smallest fall of the training loss that counts as progress under --stopping train-loss "
        "(as Keras' EarlyStopping min_delta)."))
    precision: Precision = field(default="fp32", metadata=_help(
        "'fp32', or 'bf16' autocast (faster on GPUs and on CPUs with AMX or AVX512-BF16, far slower on "
        "other CPUs, which a warning names; changes numerics)."))
    channels_last: bool = field(default=False, metadata=_help(
        "Train in channels_last memory layout (faster convolutions; fp32 results equal up to rounding)."))
    torch_compile: bool = field(default=False, metadata=_help(
        "Compile the training forward and backward with torch.compile (faster on GPUs after a compile "
        "of about a minute; fp32 results equal up to rounding)."))
    eval_batch_size: int = field(default=INFERENCE_BATCH, metadata=_help("Batch for validation and test inference."))
    cb_beta: float = field(default=0.9999, metadata=_help(
        "--loss cb's beta: the effective number of n samples is (1 - beta^n) / (1 - beta) (Cui et al. 2019: "
        "0.9999 on CIFAR-10-LT)."))
    la_tau: float = field(default=1.0, metadata=_help(
        "--loss la's temperature tau on log(prior) (Menon et al. 2021: 1)."))
    shared_init: bool = field(default=False, metadata=_help(
        "Initialise and shuffle with --seed itself, so that the 21 models of a seed start from the same weights; "
        "by default each model has its own seed, derived from (seed, sampling, class), "
        "as each of the paper's unseeded Keras models had its own start."))

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "majority_count", "width", "dense_units", "batch_size",
                  "epochs", "patience", "eval_batch_size")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val fraction {self.val_fraction} is outside [0, 1): pass e.g. --val-fraction 0.1, "
                              "or 0 to train on every sampled image")
        if self.min_delta < 0:
            raise ConfigError(f"min delta {self.min_delta} is negative: pass e.g. --min-delta 0.001")
        for name in ("dropout", "block_dropout", "dense_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name.replace('_', '-')} {getattr(self, name)} is outside [0, 1): pass e.g. "
                                  f"--{name.replace('_', '-')} 0.5")
        if not 0.0 < self.cb_beta < 1.0:
            raise ConfigError(f"cb beta {self.cb_beta} is outside (0, 1): pass e.g. --cb-beta 0.9999")
        if self.la_tau <= 0:
            raise ConfigError(f"la tau {self.la_tau} is not positive: pass e.g. --la-tau 1.0")
        if self.lr <= 0 or self.decay < 0:
            raise ConfigError("lr must be > 0 and decay >= 0: pass e.g. --lr 1e-4 --decay 1e-5")

    @property
    def init_seed(self) -> int:
        """The seed of this model's initial weights and batch order: `seed` with --shared-init, else one
        derived from (seed, sampling, class id), the same whenever this model is trained again."""
        if self.shared_init:
            return self.seed
        text = f"imbadv-init:{self.seed}:{self.sampling}:{'' if self.class_id is None else self.class_id}"
        if self.ratio not in (None, PAPER_RATIO) or self.sampling not in ("balanced", *CLASS_SAMPLINGS):
            text += f":{self.ratio}"  # the paper's models keep the seeds they always had
        if self.loss != "ce" or self.resample != "none":
            text += f":{self.loss}:{self.resample}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1  # 31 bits


@dataclass(frozen=True)
class AttackConfig:
    """An L-inf attack: the paper's FGSM or its iterative form, ascent or descent (section 3.2), or one of
    the stronger attacks beyond the paper (PGD, MI-FGSM, AutoAttack)."""

    attack: AttackName = field(default="fgsm", metadata=_help(
        "'fgsm' (one step), 'ifgsm' (iterative, projected onto the eps-ball), or beyond the paper: 'pgd' "
        "(ifgsm from a random start, with --restarts), 'mifgsm' (ifgsm with momentum, --decay) or 'autoattack' "
        "(Croce and Hein's ensemble through torchattacks, --aa-version; untargeted ascent only)."))
    direction: Direction = field(default="ascent", metadata=_help(
        "'ascent' raises the loss of the label (the paper's choice), 'descent' lowers it "
        "(with --target-label: a targeted attack)."))
    eps: float = field(default=0.01, metadata=_help(
        "L-inf budget in [0, 1] pixel units (section 3.2: 0.01)."))
    steps: int = field(default=10, metadata=_help(
        "Iterations of ifgsm, pgd and mifgsm (ignored by fgsm and autoattack)."))
    step_size: float | None = field(default=None, metadata=_help(
        "Step of each ifgsm, pgd or mifgsm iteration (default: eps / steps)."))
    target_label: int | None = field(default=None, metadata=_help(
        "Label whose loss the attack follows instead of the true label (descent: targeted)."))
    attack_loss: AttackLoss = field(default="logits", metadata=_help(
        "The loss whose gradient the attack follows: 'logits' (cross-entropy on the logits) or 'keras' "
        "(Keras 2's categorical_crossentropy on softmax outputs clipped to [1e-7, 1 - 1e-7], so the gradient "
        "is exactly zero on images the model is that sure of: how the authors' Keras may have computed it)."))
    restarts: int = field(default=1, metadata=_help(
        "pgd's random starts; each image keeps its strongest result, a misclassified one first, else the highest "
        "loss (not in the paper; Madry et al. 2018's PGD: 1)."))
    attack_seed: int = field(default=0, metadata=_help(
        "Seed of pgd's random starts and of autoattack's randomness, so an attack is reproducible (not in the "
        "paper)."))
    decay: float = field(default=1.0, metadata=_help(
        "mifgsm's momentum decay factor mu (not in the paper; Dong et al. 2018: 1.0; 0: no momentum)."))
    aa_version: AutoAttackVersion = field(default="standard", metadata=_help(
        "autoattack's ensemble: 'standard' (Croce and Hein 2020: APGD-CE, APGD-T, FAB-T, Square with 100 "
        "iterations and 5,000 queries) or 'fast' (APGD-CE then APGD-T only)."))

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 <= self.eps <= 1.0:
            raise ConfigError(f"eps {self.eps} is outside [0, 1]: eps is in pixel units, e.g. --eps 0.01")
        if self.steps < 1:
            raise ConfigError(f"steps {self.steps} is below 1: pass --steps 1 or more")
        if self.step_size is not None and self.step_size <= 0:
            raise ConfigError(f"step size {self.step_size} is not positive: pass e.g. --step-size 0.002")
        if self.target_label is not None and self.target_label < 0:
            raise ConfigError(f"target label {self.target_label} is negative: pass a label from 0 to classes-1")
        if self.restarts < 1:
            raise ConfigError(f"restarts {self.restarts} is below 1: pass --restarts 1 or more")
        if self.decay < 0:
            raise ConfigError(f"decay {self.decay} is negative: pass e.g. --decay 1.0 (0: no momentum)")
        if self.attack == "autoattack":
            # AutoAttack raises the loss of the true label and nothing else
            if self.direction != "ascent":
                raise ConfigError("autoattack is an ascent attack: drop --direction descent, or use --attack pgd")
            if self.target_label is not None:
                raise ConfigError("autoattack attacks the true label: drop --target-label, or use --attack pgd")
            if self.attack_loss != "logits":
                raise ConfigError("autoattack chooses its own losses: drop --attack-loss keras, or use --attack pgd")

    @property
    def iteration_step(self) -> float:
        """Step of one ifgsm, pgd or mifgsm iteration in pixel units."""
        return self.step_size if self.step_size is not None else self.eps / self.steps


@dataclass(frozen=True)
class EvaluateConfig(ModelSelection, AttackConfig):
    """One evaluation job: attack a registered target model with a source model's gradient (section 3.2)."""

    source: str = field(default="self", metadata=_help(
        "Whose gradient crafts the attack: 'self' (white-box), 'balanced' (the balanced model of the "
        "same data, preset and seed: black-box, section 3.2), 'peer' (the same model trained with another "
        "seed, --source-seed: black-box, what an attacker with the same data could train) or a models:/ URI."))
    source_seed: int | None = field(default=None, metadata=_help(
        "With --source peer: the seed of the peer model (default: --seed + 1)."))
    target_uri: str | None = field(default=None, metadata=_help(
        "The exact version to attack, models:/<name>/<version> (default: the selection's alias "
        "<preset>-s<seed>); a study pins the versions its own trainings made."))
    source_uri: str | None = field(default=None, metadata=_help(
        "With --source balanced or peer: the exact version of the source model, models:/<name>/<version>."))
    batch_size: int = field(default=500, metadata=_help("Images per attack batch (independent of training)."))
    precision: Precision = field(default="fp32", metadata=_help(
        "'fp32', or 'bf16' autocast for the attack's forward and backward passes (fast only where the "
        "device has bf16 units, as for train)."))
    channels_last: bool = field(default=False, metadata=_help(
        "Attack in channels_last memory layout (faster convolutions; fp32 results equal up to rounding)."))
    max_onnx_disagreement: float = field(default=MAX_ONNX_DISAGREEMENT, metadata=_help(
        "Largest share of test images on which PyTorch and onnxruntime may disagree."))
    grid_images: int = field(default=8, metadata=_help("Images in the clean-vs-adversarial grid artifact."))
    images_per_class: int = field(default=0, metadata=_help(
        "Attack only the first N test images of each class, in the dataset's order (0: all), for quick looks."))
    attack_classes: str = field(default="all", metadata=_help(
        "'all', or the comma-separated class ids whose test images are attacked (a class-c model's Table 1 "
        "cells read class c's alone)."))
    posthoc_tau: float = field(default=0.0, metadata=_help(
        "Post-hoc logit adjustment of the target (a remedy, not in the paper; Menon et al. 2021): attack and "
        "score logits - tau * log(prior), the priors from the target's training counts; 0: none. The adjusted "
        "model is registered as <target>-posthoc<tau>, with its own ONNX file."))

    def __post_init__(self) -> None:
        ModelSelection.__post_init__(self)
        AttackConfig.__post_init__(self)
        _positive(self, "batch_size")
        if self.images_per_class < 0:
            raise ConfigError(f"images per class {self.images_per_class} is negative: pass 0 (all) or more")
        _ = self.attacked_classes
        for name in ("target_uri", "source_uri"):
            value = getattr(self, name)
            if value is not None and not value.startswith("models:/"):
                raise ConfigError(f"{name.replace('_', '-')} {value!r} is not a registry URI: pass "
                                  "models:/<name>/<version>")
        if self.attack == "autoattack" and self.source != "self":
            raise ConfigError("autoattack needs the target's own gradients (white-box only): drop --source "
                              f"{self.source}, or use --attack pgd or mifgsm for a black-box attack")
        if not (math.isfinite(self.posthoc_tau) and self.posthoc_tau >= 0):
            raise ConfigError(f"posthoc tau {self.posthoc_tau} is not a finite number >= 0: pass e.g. --posthoc-tau 1 "
                              "(0: no adjustment)")
        if self.source_uri is not None and self.source not in ("balanced", "peer"):
            raise ConfigError("--source-uri pins the balanced or peer source: use it with --source balanced or peer")
        if self.source_seed is not None and self.source != "peer":
            raise ConfigError("--source-seed names the peer model's seed: use it with --source peer")
        if self.source == "peer" and self.peer_seed == self.seed:
            raise ConfigError(f"the peer of seed {self.seed} is the target itself: pass another --source-seed, or "
                              "--source self for a white-box attack")

    @property
    def attacked_classes(self) -> tuple[int, ...] | None:
        """`attack_classes` as ids, None for all."""
        if self.attack_classes == "all":
            return None
        try:
            ids = tuple(int(v) for v in self.attack_classes.split(","))
        except ValueError:
            ids = (-1,)
        if not ids or min(ids) < 0:
            raise ConfigError(f"attack classes {self.attack_classes!r} are not 'all' or comma-separated class ids: "
                              "pass e.g. --attack-classes 3 or --attack-classes 3,5")
        return ids

    @property
    def peer_seed(self) -> int:
        """The seed of the peer source (`--source peer`): `source_seed`, else the next seed."""
        return self.seed + 1 if self.source_seed is None else self.source_seed

    def attack_config(self) -> AttackConfig:
        """The attack part alone, as the pure attack functions take it."""
        names = {f.name for f in dataclasses.fields(AttackConfig)}
        return AttackConfig(**{n: getattr(self, n) for n in names})


def _positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ConfigError(f"{name.replace('_', '-')} is {value}: it must be 1 or more")


# Presets: named sets of TrainConfig values, applied before the user's overrides (evaluations of the
# preset's models take EVALUATE_PRESET_FIELDS of them).
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model and schedule (section 3.1); sized for a GPU.
    "paper": {},
    # A 2-core CPU: a quarter of VGG's width, a larger step and the channels_last layout, so one
    # balanced model trains in about four minutes and the 21-model study in about an hour.
    "cpu": {"width": 16, "batch_size": 64, "lr": 1e-3, "epochs": 6, "patience": 2, "channels_last": True},
    # The paper's model and schedule with a GPU's fast paths: bf16 autocast, torch.compile and
    # channels_last (numerics change; every value is logged with the run).
    "paper-fast": {"precision": "bf16", "torch_compile": True, "channels_last": True},
    # paper-fast without torch.compile: what a training group (--group-trainings) runs on a GPU.
    "paper-group": {"precision": "bf16", "channels_last": True},
    # The paper's model and schedule with the regularisation of the Keras CIFAR-10 example whose
    # RMSprop and lr the paper uses: random shifts and flips, dropout 0.25 after each pooled block
    # and 0.5 after the dense layer; early stopping on the held-out loss, which augmentation keeps
    # from levelling off as early as the training loss would.
    "paper-aug": {"augment": "keras", "block_dropout": 0.25, "dense_dropout": 0.5, "stopping": "val-loss",
                  "patience": 10},
    # paper-aug with paper-fast's GPU fast paths.
    "paper-aug-fast": {"augment": "keras", "block_dropout": 0.25, "dense_dropout": 0.5, "stopping": "val-loss",
                       "patience": 10, "precision": "bf16", "torch_compile": True, "channels_last": True},
    # Seconds: tiny width, a few hundred training images; evaluation still uses the whole test set.
    "smoke": {"width": 8, "dense_units": 64, "majority_count": 100,
              "batch_size": 8, "lr": 1e-3, "epochs": 2, "patience": 2},
}


def check_preset(preset: str) -> None:
    """Refuse a preset name that is not one of PRESETS, naming the ones there are."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")


# The preset values that an evaluation of the preset's models takes too: the memory layout of the
# attack's passes. Precision is not shared: attacks stay fp32 unless --precision asks otherwise.
EVALUATE_PRESET_FIELDS = ("channels_last",)


def preset_values(cls: type, preset: str) -> dict[str, Any]:
    """The values `preset` sets on a config of type `cls` (TrainConfig or EvaluateConfig)."""
    check_preset(preset)
    values = PRESETS[preset]
    if issubclass(cls, EvaluateConfig):
        return {k: v for k, v in values.items() if k in EVALUATE_PRESET_FIELDS}
    return dict(values)


def _resolve(cls: type, options: dict[str, Any]) -> Any:
    preset = options.get("preset") or ModelSelection.__dataclass_fields__["preset"].default
    values = {**preset_values(cls, preset), **{k: v for k, v in options.items() if v is not None}}
    values["preset"] = preset
    return cls(**values)


def resolve_train_config(**options: Any) -> TrainConfig:
    """TrainConfig from the preset's values overridden by every option that is not None."""
    return _resolve(TrainConfig, options)


def resolve_evaluate_config(**options: Any) -> EvaluateConfig:
    """EvaluateConfig from the preset's evaluation values overridden by every option that is not None."""
    return _resolve(EvaluateConfig, options)


def as_params(config: object) -> dict[str, str]:
    """A config as flat MLflow params (None logged as an empty string)."""
    return {k: "" if v is None else str(v) for k, v in dataclasses.asdict(config).items()}
