"""The study's config (`imbadv reproduce`): which models and attacks, and how its steps run.

The models' and attacks' own values come from `imbadv.config` (TrainConfig, AttackConfig and the
presets); a study names the grid (seeds, eps, classes) and how it runs (executor, workers).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from imbadv.config import (CIFAR10_CLASSES, CLASS_SAMPLINGS, PAPER_RATIO, PRESETS, AttackConfig, AttackLoss, AttackName,
                           ConfigError, Loss, ModelSelection, Resample, TrainConfig, canonical_data, check_choices,
                           check_preset, default_cache_dir, parse_class_id, resolve_train_config)

PAPER_ATTACK = AttackConfig.attack  # section 3.2: FGSM
ITERATIVE_ATTACKS = ("ifgsm", "mifgsm", "pgd")  # the attacks that take --steps and --step-size
# A study's PGD step when --step-size is not given: eps / 4, Madry et al. (2018)'s CIFAR-10 step (2/255
# at eps 8/255); from a random start, eps / steps would leave the corners of the eps-ball out of reach.
PGD_STEP_OF_EPS = 0.25
WHITEBOX_ONLY_ATTACKS = ("autoattack",)  # the attacks that need the target's own model, not a source's gradient
Engine = Literal["shared", "isolated"]
BlackBox = Literal["balanced", "peer"]
Executor = Literal["local", "ray"]


@dataclass(frozen=True)
class StudyConfig:
    """A study: the paper's 21 models and 50 attacked combinations, per seed and eps (section 4)."""

    preset: str = field(default=ModelSelection.preset, metadata={
        "help": "Preset of every model (paper, paper-fast, paper-group, paper-aug, paper-aug-fast, cpu, smoke)."})
    seeds: int = field(default=1, metadata={"help": "Seeds per configuration (first-seed .. first-seed+seeds-1)."})
    first_seed: int = field(default=0, metadata={"help": (
        "The study's first seed: e.g. --first-seed 1 --seeds 2 runs seeds 1 and 2 (in a store of their own, "
        "then `imbadv report --results` combines its report's results.json with seed 0's).")})
    data: str = field(default=ModelSelection.data, metadata={"help": "Data source, as for train."})
    eps: str = field(default=f"{AttackConfig.eps:g}", metadata={
        "help": "One eps or a comma-separated sweep (section 3.2: 0.01)."})
    classes: str = field(default="all", metadata={"help": (
        "'all', or comma-separated class ids or the dataset's class names (CIFAR-10's cat, dog; GTSRB's stop).")})
    ratios: str = field(default=f"{PAPER_RATIO:g}", metadata={"help": (
        "Imbalance ratios of each class's under- and over-sampled models, comma-separated (section 3.1: 5); "
        "ratio 1 is the balanced model, trained once per seed.")})
    samplings: str = field(default=",".join(CLASS_SAMPLINGS), metadata={"help": (
        "Which of each class's profiles train at each ratio of --ratios, comma-separated: under (class c cut), "
        "over (every other class cut); section 3.1 trains both.")})
    longtail: str = field(default="", metadata={"help": (
        "Ratios of long-tailed models (class i keeps majority * ratio^(-i/(classes-1)), Cui et al. 2019), "
        "comma-separated, one model per seed each; empty: none.")})
    losses: str = field(default="ce", metadata={"help": (
        "Training losses of the imbalanced models, comma-separated, as train's --loss: ce (the paper's), cb, la, "
        "bs; each a model of its own. The balanced model (every black-box source) trains with ce.")})
    resample: str = field(default="none", metadata={"help": (
        "Resamplings of the imbalanced models, comma-separated, as train's --resample: none, oversample; "
        "each loss is trained under each.")})
    natural: bool = field(default=False, metadata={"help": (
        "Also train the natural profile (every training image, as the dataset has it) under each remedy, one "
        "model per seed: the profile of a naturally imbalanced dataset such as GTSRB.")})
    black_box: BlackBox = field(default="balanced", metadata={"help": (
        "Whose gradient crafts the black-box attacks: 'balanced' (the same seed's balanced model, section 3.2) "
        "or 'peer' (the target's own profile and remedy trained with the study's next seed, its own "
        "initialisation and batch order: what an attacker with the same data could train; needs 2 seeds or "
        "more). With 'peer', the balanced model trains only where --ratios holds 1.")})
    posthoc: str = field(default="", metadata={"help": (
        "Post-hoc logit adjustments (evaluate's --posthoc-tau, Menon et al. 2021), comma-separated taus above "
        "0: each attacks every imbalanced cross-entropy model adjusted with that tau, beside the model itself; "
        "empty: none.")})
    jobs: int = field(default=1, metadata={"help": (
        "With --executor local: steps run at once on this machine, each in its own process with an equal share "
        "of the cores.")})
    force: bool = field(default=False, metadata={"help": "Rerun steps even when a finished run matches."})
    shared_init: bool = field(default=False, metadata={"help": (
        "Start all models of a seed from the same weights and batch order, as train's --shared-init.")})
    attack_loss: AttackLoss = field(default=AttackConfig.attack_loss, metadata={"help": (
        "The evaluations' attack loss, as evaluate's --attack-loss (logits or keras); the trainings are "
        "the same either way, so a second study with the other loss reuses them.")})
    attacks: str = field(default=PAPER_ATTACK, metadata={"help": (
        "Comma-separated attacks, each adding the grid's evaluations on the same trainings: fgsm (the paper's), "
        "ifgsm, mifgsm, pgd, autoattack. AutoAttack attacks the white-box cells only; beyond FGSM, a class's "
        "models are attacked on that class's test images only (the images its cells need).")})
    steps: int = field(default=20, metadata={"help": "Iterations of ifgsm, mifgsm and pgd (PGD-20)."})
    step_size: float | None = field(default=None, metadata={"help": (
        "Step of each iteration (default: eps / 4 for pgd, as Madry et al. on CIFAR-10; eps / steps for ifgsm "
        "and mifgsm, as evaluate).")})
    restarts: int = field(default=AttackConfig.restarts, metadata={"help": "PGD's random restarts."})
    attack_seed: int = field(default=AttackConfig.attack_seed, metadata={"help": (
        "Seed of PGD's random starts and AutoAttack's randomness.")})
    decay: float = field(default=AttackConfig.decay, metadata={"help": "MI-FGSM's momentum decay."})
    aa_version: str = field(default=AttackConfig.aa_version, metadata={"help": (
        "AutoAttack's version: 'standard' (APGD-CE, APGD-T, FAB-T, Square) or 'fast' (APGD-CE, APGD-T).")})
    images_per_class: int = field(default=0, metadata={"help": (
        "Attack only the first N test images of each class (0: all), for quick looks; part of each "
        "evaluation's identity.")})
    train_options: str = field(default="", metadata={"help": (
        "Training options set on every model of the study, comma-separated KEY=VALUE as train's options "
        "(e.g. init=torch,stopping=val-loss), for ablations; part of the study's identity, so each set of "
        "options is a study of its own.")})
    engine: Engine = field(default="shared", metadata={"help": (
        "'shared': long-lived workers that load data and models once and share each target's clean pass, "
        "ONNX check and the black-box adversarial sets between its evaluations (same results); 'isolated': "
        "every step computes all it needs itself.")})
    group_trainings: int = field(default=0, metadata={"help": (
        "With --executor local: trainings of one kind (equally many images) trained side by side in one "
        "shared-engine worker, vectorised: 0 = auto (10 on CUDA with a preset without torch.compile or "
        "augmentation, else 1), 1 = each alone. Grouped models equal alone-trained ones up to float32 rounding, "
        "not bit for bit.")})
    executor: Executor = field(default="local", metadata={"help": (
        "'local': worker processes on this machine; 'ray': each step a task on a Ray cluster (--ray-address), "
        "with the same reuse, resume and results.")})
    ray_address: str = field(default="", metadata={"help": (
        "With --executor ray: the cluster to join (default: $RAY_ADDRESS, else a Ray instance started on "
        "this machine).")})
    cpus_per_step: int = field(default=1, metadata={"help": (
        "With --executor ray: the CPUs each step asks Ray for, and its torch threads; a node runs as many steps "
        "at once as it has CPUs for.")})
    gpus_per_training: float = field(default=0.0, metadata={"help": (
        "With --executor ray: the GPU share each training asks Ray for (0.25 runs four at once on one GPU); "
        "0: none, on CPU nodes.")})
    cache_dir: str = field(default_factory=default_cache_dir, metadata={"help": "Cache, as for train."})
    device: str = field(default=ModelSelection.device, metadata={"help": "'auto', 'cpu' or 'cuda'."})

    def __post_init__(self) -> None:
        check_choices(self)
        check_preset(self.preset)
        check_executor_options(self)
        object.__setattr__(self, "data", canonical_data(self.data))  # one study, however its data is named
        for name in ("seeds", "jobs", "cpus_per_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} is {getattr(self, name)}: it must be 1 or more")
        if not 0.0 <= self.gpus_per_training <= 1.0:
            raise ConfigError(f"gpus per training {self.gpus_per_training} is outside [0, 1]: pass e.g. "
                              "--gpus-per-training 0.25")
        if self.group_trainings < 0:
            raise ConfigError(f"group trainings {self.group_trainings} is negative: pass 0 (auto), 1 or more")
        if self.group_trainings > 1 and self.engine != "shared":
            raise ConfigError("training groups run on the shared engine: drop --engine isolated or pass "
                              "--group-trainings 1")
        if self.group_trainings > 1 and not groupable(self.preset):
            raise ConfigError(f"preset {self.preset} uses torch.compile or augmentation, which a training group "
                              "does not run: pass --group-trainings 1 or a preset without them (paper-group)")
        resolve_train_config(preset=self.preset, **self.training_overrides)  # a bad value stops the study here
        if self.first_seed < 0:
            raise ConfigError(f"first seed {self.first_seed} is negative: pass --first-seed 0 or more")
        for value in self.eps_values:
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"eps {value} is outside [0, 1]: eps is in pixel units, e.g. --eps 0.01")
        if self.images_per_class < 0:
            raise ConfigError(f"images per class {self.images_per_class} is negative: pass 0 (all) or more")
        _ = (self.ratio_values, self.sampling_values, self.longtail_values, self.loss_values, self.resample_values,
             self.posthoc_values)
        if self.black_box == "peer" and self.seeds < 2:
            raise ConfigError("--black-box peer attacks each model from the same model of another seed: pass --seeds "
                              "2 or more, or --black-box balanced")
        for attack in self.attack_values:
            AttackConfig(**self.attack_options(attack, self.eps_values[0] if self.eps_values else AttackConfig.eps))

    @property
    def attack_values(self) -> tuple[str, ...]:
        """`attacks` as a tuple, each once, in the order given."""
        values = tuple(dict.fromkeys(a.strip() for a in self.attacks.split(",") if a.strip()))
        known = get_args(AttackName)
        if not values or any(a not in known for a in values):
            raise ConfigError(f"attacks {self.attacks!r} are not a comma-separated list of {', '.join(known)}: pass "
                              "e.g. --attacks fgsm,pgd")
        return values

    def attack_options(self, attack: str, eps: float) -> dict[str, Any]:
        """The evaluate options of one attack at one eps: the paper's FGSM as before, and for the others
        the settings that the attack reads."""
        options: dict[str, Any] = {"attack": attack, "direction": AttackConfig.direction, "eps": eps}
        if self.attack_loss != AttackConfig.attack_loss:
            options["attack_loss"] = self.attack_loss
        if attack in ITERATIVE_ATTACKS:
            options["steps"] = self.steps
            if self.step_size is not None:
                options["step_size"] = self.step_size
            elif attack == "pgd":
                options["step_size"] = eps * PGD_STEP_OF_EPS
        if attack == "pgd":
            options |= {"restarts": self.restarts, "attack_seed": self.attack_seed}
        if attack == "mifgsm":
            options["decay"] = self.decay
        if attack == "autoattack":
            options |= {"aa_version": self.aa_version, "attack_seed": self.attack_seed}
        return options

    @property
    def kind(self) -> str:
        """What the parent run is called: a study, or a sweep (`SweepConfig`)."""
        return "study"

    @property
    def ratio_values(self) -> tuple[float, ...]:
        """`ratios` as numbers, each once, in the order given (1: the balanced model)."""
        return _ratios(self.ratios, "ratios", minimum=1.0)

    @property
    def sampling_values(self) -> tuple[str, ...]:
        """`samplings` as a tuple, each once, in the order given."""
        return _choices(self.samplings, "samplings", CLASS_SAMPLINGS)

    @property
    def longtail_values(self) -> tuple[float, ...]:
        """`longtail` as numbers, each once, in the order given."""
        return _ratios(self.longtail, "longtail", minimum=None)

    @property
    def loss_values(self) -> tuple[str, ...]:
        return _choices(self.losses, "losses", get_args(Loss))

    @property
    def resample_values(self) -> tuple[str, ...]:
        return _choices(self.resample, "resample", get_args(Resample))

    @property
    def posthoc_values(self) -> tuple[float, ...]:
        """`posthoc` as taus, each once, in the order given."""
        try:
            values = tuple(dict.fromkeys(float(v) for v in self.posthoc.split(",") if v.strip()))
        except ValueError:
            values = (0.0,)
        if any(not (math.isfinite(v) and v > 0) for v in values):
            raise ConfigError(f"posthoc {self.posthoc!r} is not comma-separated taus above 0: pass e.g. --posthoc 1 "
                              "or --posthoc 0.5,1,2")
        return values

    @property
    def training_overrides(self) -> dict[str, Any]:
        """`train_options` as typed TrainConfig values: {} when empty."""
        return parse_train_options(self.train_options)

    @property
    def seed_values(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)

    @property
    def eps_values(self) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in self.eps.split(",") if v.strip())
        except ValueError as error:
            raise ConfigError(f"eps {self.eps!r} is not a number or a comma-separated list: pass e.g. "
                              "--eps 0.01,0.02") from error

    def class_ids(self, num_classes: int | None, class_names: Sequence[str] = CIFAR10_CLASSES) -> tuple[int, ...]:
        """The study's classes, as ids or the dataset's `class_names` (CIFAR-10's by default); with
        `num_classes` None (dataset not loaded yet) ids are parsed, not range-checked."""
        if self.classes == "all":
            return tuple(range(num_classes or 0))
        named = "CIFAR-10 class names" if tuple(class_names) == CIFAR10_CLASSES else "the dataset's class names"
        try:
            ids = tuple(parse_class_id(v, class_names) for v in self.classes.split(","))
        except ConfigError as error:
            raise ConfigError(f"classes {self.classes!r} is not 'all' or a list of ids or {named} "
                              f"({', '.join(class_names)}): pass e.g. --classes 3,5 or --classes "
                              f"{','.join(class_names[:2])}") from error
        if negative := [c for c in ids if c < 0]:
            raise ConfigError(f"class ids {negative} are negative: pass ids from 0 (or {named})")
        bad = [c for c in ids if num_classes is not None and c >= num_classes]
        if bad:
            raise ConfigError(f"class ids {bad} are outside this dataset's {num_classes} classes: pass ids "
                              f"from 0 to {num_classes - 1}")
        return ids

    @property
    def identity(self) -> dict[str, Any]:
        """What the study computes (logged as params, hashed into its key); not how it runs (`RUN_OPTIONS`)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_OPTIONS}
        return {k: v for k, v in values.items() if (k, v) not in LATER_DEFAULTS.items()}

    def peer_seed(self, seed: int) -> int:
        """The seed of `seed`'s peer models (`--black-box peer`): the study's next seed, the first after the last."""
        seeds = self.seed_values
        return seeds[(seeds.index(seed) + 1) % len(seeds)]

    @property
    def trains_balanced(self) -> bool:
        """Whether the study trains the balanced model: the black-box source, or ratio 1 of the curves."""
        return self.black_box == "balanced" or 1.0 in self.ratio_values


def _choices(text: str, name: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated values among `choices`, each once, in the order given."""
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values or any(v not in choices for v in values):
        raise ConfigError(f"--{name} {text!r} is not a comma-separated list of {', '.join(choices)}: pass "
                          f"e.g. --{name} {','.join(choices[:2])}")
    return values


def _ratios(text: str, name: str, minimum: float | None) -> tuple[float, ...]:
    """Comma-separated ratios, each at least `minimum` (None: above 1), each once."""
    try:
        values = tuple(dict.fromkeys(float(v) for v in text.split(",") if v.strip()))
    except ValueError:
        values = (0.0,)
    if any(v < minimum if minimum is not None else v <= 1.0 for v in values):
        bound = f"{minimum:g} or more" if minimum is not None else "above 1"
        raise ConfigError(f"{name} {text!r} are not comma-separated ratios {bound}: pass e.g. --{name} "
                          f"{'1,5,20' if name == 'ratios' else '10,100'}")
    return values


# The sweep's grid when its options are not given (`imbadv sweep`): the paper's ratio 5 among ratios
# from 2 to 100 (CIFAR-10-LT's usual 10, 50 and 100), and CIFAR-10-LT at 10 and 100.
SWEEP_RATIOS = "1,2,5,10,20,50,100"
SWEEP_LONGTAIL = "10,100"


@dataclass(frozen=True)
class SweepConfig(StudyConfig):
    """A sweep (`imbadv sweep`): the study's engine over imbalance ratios and long-tailed profiles."""

    ratios: str = field(default=SWEEP_RATIOS, metadata=StudyConfig.__dataclass_fields__["ratios"].metadata)
    longtail: str = field(default=SWEEP_LONGTAIL, metadata=StudyConfig.__dataclass_fields__["longtail"].metadata)

    @property
    def kind(self) -> str:
        return "sweep"


@dataclass(frozen=True)
class NaturalConfig(StudyConfig):
    """A study of a naturally imbalanced dataset (`imbadv natural`, e.g. GTSRB): the natural profile under
    each remedy, attacked white-box and from a peer of another seed, with no hand-made imbalance."""

    seeds: int = field(default=3, metadata=StudyConfig.__dataclass_fields__["seeds"].metadata)
    ratios: str = field(default="", metadata=StudyConfig.__dataclass_fields__["ratios"].metadata)
    losses: str = field(default="ce,cb,la,bs", metadata=StudyConfig.__dataclass_fields__["losses"].metadata)
    natural: bool = field(default=True, metadata=StudyConfig.__dataclass_fields__["natural"].metadata)
    black_box: BlackBox = field(default="peer", metadata=StudyConfig.__dataclass_fields__["black_box"].metadata)
    attacks: str = field(default="fgsm,pgd", metadata=StudyConfig.__dataclass_fields__["attacks"].metadata)

    @property
    def kind(self) -> str:
        return "natural"


# Options added after studies were run, at their defaults: left out of the identity, so that those studies
# keep their keys (and their parent runs).
LATER_DEFAULTS: dict[str, Any] = {"posthoc": "", "natural": False, "black_box": "balanced",
                                   "samplings": ",".join(CLASS_SAMPLINGS)}

# How a study runs, not what it computes: not logged as params, not in the study's key.
RUN_OPTIONS = ("force", "jobs", "cache_dir", "device", "engine", "group_trainings", "executor", "ray_address",
               "cpus_per_step", "gpus_per_training")

# The options only one executor honours: set with another executor, they are refused, never ignored.
EXECUTOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "local": ("jobs", "group_trainings"),
    "ray": ("ray_address", "cpus_per_step", "gpus_per_training"),
}


def check_executor_options(config: StudyConfig) -> None:
    """Refuse an option set away from its default that the chosen executor does not honour."""
    defaults = {f.name: f.default for f in dataclasses.fields(StudyConfig)}
    for executor, options in EXECUTOR_OPTIONS.items():
        for name in options:
            value = getattr(config, name)
            if executor != config.executor and value != defaults[name] and not (name == "group_trainings"
                                                                               and value == 1):
                flag = f"--{name.replace('_', '-')}"
                raise ConfigError(f"{flag} applies to --executor {executor} only: drop {flag}, or pass "
                                  f"--executor {executor}")


def groupable(preset: str) -> bool:
    """Whether a preset's trainings can run in a training group (no torch.compile, no augmentation)."""
    values = PRESETS.get(preset, {})
    return not values.get("torch_compile") and values.get("augment", "none") == "none"


# What a study sets itself for each training, so --train-options may not.
STUDY_TRAINING_FIELDS = ("sampling", "class_id", "ratio", "loss", "resample", "seed", "preset", "data", "cache_dir",
                         "device", "shared_init")


def parse_train_options(text: str) -> dict[str, Any]:
    """'init=torch,epochs=12' -> {'init': 'torch', 'epochs': 12}, each value typed as its TrainConfig field."""
    hints = typing.get_type_hints(TrainConfig)
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints or key in STUDY_TRAINING_FIELDS:
            allowed = sorted(set(hints) - set(STUDY_TRAINING_FIELDS))
            raise ConfigError(f"train option {item!r} is not KEY=VALUE with a train option as KEY: use one of "
                              f"{', '.join(allowed)}, e.g. --train-options init=torch,epochs=12")
        options[key] = _typed(hints[key], value.strip(), key)
    return options


def _typed(hint: Any, value: str, key: str) -> Any:
    kind = next((t for t in (bool, int, float) if hint is t or t in get_args(hint)), str)
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"train option {key}={value} is not true or false: pass {key}=true or {key}=false")
        return value.lower() in ("true", "1")
    try:
        return kind(value)
    except ValueError:
        article = "an" if kind is int else "a"
        raise ConfigError(f"train option {key}={value} is not {article} {kind.__name__}: pass e.g. "
                          f"{key}={getattr(TrainConfig, key)}") from None
