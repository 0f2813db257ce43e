"""`imbadv`: the command line. Options are generated from the job configs, so they never drift.

Every option defaults to None, meaning "the preset's value, else the config's default"; the
help text shows both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Optional

import typer

from imbadv.config import (CIFAR10_CLASSES, PRESETS, ConfigError, EvaluateConfig, ModelSelection, TrainConfig,
                           default_cache_dir, preset_values, resolve_evaluate_config, resolve_train_config)
from imbadv.study.config import NaturalConfig, StudyConfig, SweepConfig

app = typer.Typer(help="Gradient-sign attacks on class-imbalanced CIFAR-10 classifiers, tracked in MLflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="Registered imbadv models.", invoke_without_command=True)
app.add_typer(models_app, name="models")


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story for a user (imported only when one is raised)."""
    from imbadv.core.data import DataError
    from imbadv.core.export import OnnxMismatch
    from imbadv.core.trainer import TrainingDiverged
    from imbadv.study.engine import StudyFailed
    from imbadv.study.reuse import ReuseError
    from imbadv.tracking.registry import RegistryError
    from imbadv.tracking.results import MixedVersions
    from imbadv.tracking.store import StoreUnreachable

    return (ConfigError, DataError, RegistryError, OnnxMismatch, TrainingDiverged, StudyFailed, ReuseError,
            MixedVersions, StoreUnreachable)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Known errors end the command with `imbadv: error: <message>` and exit code 1, no traceback; Ctrl-C
    (and SIGTERM to a study) with `imbadv: stopped ...` and 130, the shell's code for an interrupt."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("imbadv: stopped: its runs in progress are KILLED; rerun the same command to continue "
                   "(a training resumes from its last checkpoint)", err=True)
        raise typer.Exit(code=130) from None
    except Exception as error:
        # a ConfigError is matched first: the other error classes load torch and MLflow
        if not isinstance(error, ConfigError) and not isinstance(error, _known_errors()):
            raise
        typer.echo(f"imbadv: error: {error}", err=True)
        raise typer.Exit(code=1) from None


def _option_type(hint: Any) -> type:
    """The plain type typer parses for a config field (Literals are parsed as str, checked by the config)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        return str
    return hint


def _help_text(cls: type, field: dataclasses.Field) -> str:
    text = field.metadata.get("help", "")
    if field.default is not dataclasses.MISSING and field.name != "cache_dir":
        text += f" (default: {field.default}"
        if cls in (TrainConfig, EvaluateConfig):
            by_preset = [f"{name}: {values[field.name]}" for name in PRESETS
                         if field.name in (values := preset_values(cls, name))]
            if by_preset:
                text += "; preset " + ", ".join(by_preset)
        text += ")"
    return text


def config_command(cls: type, job: Callable[..., Any],
                   extra: tuple[inspect.Parameter, ...] = ()) -> Callable[..., None]:
    """A typer command whose options are `cls`'s fields (kebab-case) and `extra`, calling `job(**options)`."""
    hints = typing.get_type_hints(cls)
    parameters = list(extra)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = str if field.name == "class_id" else _option_type(hints[field.name])  # an id or a class name
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(None, *decls, help=_help_text(cls, field), show_default=False)
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=Optional[kind]))  # noqa: UP045 (typer reads it at run time)

    def command(**options: Any) -> None:
        with _one_line_errors():
            if "class_id" in options:  # a name needs the dataset's class names: numpy and Pillow, not torch
                from imbadv.core.data import class_id_of

                options["class_id"] = class_id_of(options["class_id"], options.get("data") or ModelSelection.data,
                                                  options.get("cache_dir") or default_cache_dir())
            job(**options)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = cls.__doc__
    return command


def _train(**options: Any) -> None:
    resolve_train_config(**{k: v for k, v in options.items() if k != "resume"})  # bad options: no torch, no run
    from imbadv.jobs.train import run_train

    run_train(**options)


def _evaluate(**options: Any) -> None:
    resolve_evaluate_config(**options)  # bad options fail here, before torch and MLflow load
    from imbadv.jobs.evaluate import run_evaluate

    run_evaluate(**options)


def _study(kind: type[StudyConfig]) -> Callable[..., None]:
    """The job of `reproduce` (a StudyConfig), `sweep` (a SweepConfig) or `natural` (a NaturalConfig): the same
    engine, another grid."""
    return lambda **options: _run_study(kind(**{k: v for k, v in options.items() if v is not None}))


def _run_study(config: StudyConfig) -> None:
    from imbadv.core.data import dataset_class_names  # numpy and Pillow only

    # bad values fail before torch and MLflow load; class names need the dataset's (read from its folders)
    names = dataset_class_names(config.data, config.cache_dir) if config.classes != "all" else ()
    _ = config.eps_values, config.class_ids(num_classes=None, class_names=names or CIFAR10_CLASSES)
    from imbadv.study import workers

    local = config.executor == "local"  # on Ray, the cluster's workers run the steps
    with workers.start(config) if local else contextlib.nullcontext() as pool:  # they start while modules load
        from imbadv.study.engine import run_study

        outcome = run_study(config, pool)
    typer.echo(f"study run {outcome.parent_run_id}: {len(outcome.ran)} steps ran, {len(outcome.reused)} reused, "
               f"{outcome.seconds:.0f} s")


def report(preset: Optional[str] = typer.Option(None, show_default=False,  # noqa: UP045
                                                help=f"Preset of the study (default: {StudyConfig.preset})."),
           data: Optional[str] = typer.Option(None, show_default=False, help=(  # noqa: UP045
               f"Data source of the study, as for train (default: {StudyConfig.data}).")),
           output_dir: str = typer.Option("reports", show_default=False,
                                          help="Folder for <dataset>-<preset>/ (default: reports)."),
           attack_loss: Optional[str] = typer.Option(None, show_default=False, help=(  # noqa: UP045
               "Report the evaluations made with this attack loss, logits or keras (default: "
               f"{StudyConfig.attack_loss}); keras writes to <dataset>-<preset>-keras-loss/.")),
           images_per_class: Optional[int] = typer.Option(None, show_default=False, help=(  # noqa: UP045
               "Report the evaluations that attacked the first N test images of each class, as the study's "
               "--images-per-class (default: 0, all); writes to <dataset>-<preset>-<N>-per-class/.")),
           results: Optional[list[str]] = typer.Option(None, "--results", metavar="FILE", show_default=False, help=(  # noqa: UP045, B008 (typer)
               "Report the results.json files of earlier reports instead of this tracking store, their seeds "
               "combined: repeat it or separate paths by commas (e.g. seeds run in separate stores with "
               "reproduce's --first-seed).")),
           sweep: bool = typer.Option(False, "--sweep", show_default=False, help=(
               "Write the sweep's report instead of Table 1 (each class over the imbalance ratio, the long-tailed "
               "models; `imbadv sweep`'s runs) to <dataset>-<preset>-sweep/.")),
           natural: bool = typer.Option(False, "--natural", show_default=False, help=(
               "Write the natural-imbalance report instead of Table 1 (per-class accuracy against training images, "
               "rank correlations, the confusions attacks create, remedies; `imbadv natural`'s runs) to "
               "<dataset>-<preset>-natural/."))) -> None:
    """Write the study's Table 1 beside the paper's, its figures and claim checks (reads runs only)."""
    from imbadv.report.output import run_report, run_report_from_files

    with _one_line_errors():
        if sweep and natural:
            raise ConfigError("--sweep and --natural are two reports: pass one of them")
        if (sweep or natural) and results:
            flag = "--sweep" if sweep else "--natural"
            raise ConfigError(f"{flag} cannot be combined with --results: its report reads each model's training "
                              "counts from the tracking store's registry; pass --preset and --data")
        if results:
            given = {"--preset": preset, "--data": data, "--attack-loss": attack_loss,
                     "--images-per-class": images_per_class}
            if any(value is not None for value in given.values()):
                passed = ", ".join(option for option, value in given.items() if value is not None)
                raise ConfigError(f"{passed} cannot be combined with --results: the files name their study; "
                                  "pass only --results and --output-dir")
            run_report_from_files([path for value in results for path in value.split(",") if path], output_dir)
            return
        from imbadv.tracking import store

        store.prepare()
        if sweep:
            from imbadv.report.sweep_output import run_sweep_report

            run_sweep_report(preset or SweepConfig.preset, data or SweepConfig.data, output_dir,
                             attack_loss or SweepConfig.attack_loss, images_per_class or 0)
            return
        if natural:
            from imbadv.report.natural_output import run_natural_report

            run_natural_report(preset or NaturalConfig.preset, data or NaturalConfig.data, output_dir,
                               attack_loss or NaturalConfig.attack_loss, images_per_class or 0)
            return
        run_report(preset or StudyConfig.preset, data or StudyConfig.data, output_dir,
                   attack_loss or StudyConfig.attack_loss, images_per_class or 0)


app.command("report")(report)
RESUME = inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(  # noqa: UP045
    None, "--resume", help="Run id to continue from its last checkpoint (a killed run of the same training is "
    "found and continued without it)."))
app.command("train", help="Train one model of the study, export it to ONNX and register it.")(
    config_command(TrainConfig, _train, (RESUME,)))
app.command("evaluate", help="Attack a registered model (FGSM, iterative attacks, AutoAttack) and score it per class.")(
    config_command(EvaluateConfig, _evaluate))
app.command("reproduce", help="Run the paper's study: 21 models per seed and their attacks; reuses finished runs.")(
    config_command(StudyConfig, _study(StudyConfig)))
app.command("sweep", help="Run the imbalance sweep: each class under- and over-sampled at each ratio, long-tailed "
            "models, and their attacks, on the study's engine; reuses finished runs.")(
    config_command(SweepConfig, _study(SweepConfig)))
app.command("natural", help="Study a naturally imbalanced dataset (e.g. GTSRB): the natural profile under each "
            "remedy, attacked white-box and from a peer of another seed; reuses finished runs.")(
    config_command(NaturalConfig, _study(NaturalConfig)))


@models_app.callback()
def models_list(ctx: typer.Context,
                as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List registered models with their versions, aliases and key metrics."""
    if ctx.invoked_subcommand is not None:
        return
    from imbadv.tracking import store
    from imbadv.tracking.registry import list_registered

    with _one_line_errors():
        store.prepare()
        models = list_registered()
    if as_json:
        typer.echo(json.dumps(models, indent=2))
        return
    if not models:
        typer.echo("no imbadv models are registered yet: train one with `imbadv train --preset smoke --data ...`")
        return
    typer.echo(f"{'model':34} {'version':>7}  {'aliases':18} {'test_acc':>8} {'onnx_agree':>10}")
    for model in models:
        for version in model["versions"]:
            typer.echo(f"{model['name']:34} {version['version']:>7}  {','.join(version['aliases']) or '-':18} "
                       f"{_fmt(version['test_acc']):>8} {_fmt(version['onnx_agreement']):>10}")


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Registered model name, e.g. imbadv-cifar10-balanced."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")) -> None:
    """Show one registered model: every version with its aliases, tags and metrics."""
    from imbadv.tracking import store
    from imbadv.tracking.registry import describe

    with _one_line_errors():
        store.prepare()
        model = describe(name)
    if as_json:
        typer.echo(json.dumps(model, indent=2))
        return
    typer.echo(model["name"])
    for version in model["versions"]:
        typer.echo(f"  version {version['version']}  aliases: {', '.join(version['aliases']) or '-'}  "
                   f"test_acc: {_fmt(version['test_acc'])}  onnx_agreement: {_fmt(version['onnx_agreement'])}  "
                   f"run: {version['run_id']}")
        for key, value in sorted(version["tags"].items()):
            typer.echo(f"    {key}: {value}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command("ui")
def ui(port: int = typer.Option(5000, help="Port of the UI (default: 5000, as mlflow ui).", show_default=False),
       host: str = typer.Option("127.0.0.1", show_default=False,
                                help="Address to listen on (default: 127.0.0.1, this machine only)."),
       open_browser: bool = typer.Option(False, "--open/--no-open", show_default=False,
                                         help="Open the runs in a browser (default: print the URL only).")) -> None:
    """Start the MLflow UI on imbadv's tracking store and print the URL of the imbadv runs; Ctrl-C stops it."""
    from imbadv.tracking import ui as tracking_ui

    with _one_line_errors():
        try:
            tracking_ui.serve(host, port, open_browser, typer.echo)
        except tracking_ui.UiError as error:
            typer.echo(f"imbadv: error: {error}", err=True)
            raise typer.Exit(code=1) from None


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv` (default: sys.argv), dropping options given as empty strings.

    `mlflow run` passes every MLproject parameter, and an empty one means "the config's default".
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    i = 0
    while i < len(args):
        if args[i].startswith("--") and "=" not in args[i] and i + 1 < len(args) and args[i + 1] == "":
            i += 2
            continue
        kept.append(args[i])
        i += 1
    app(args=kept, prog_name="imbadv")
