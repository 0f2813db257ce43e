"""The `imbadv` CLI: options mirror the configs; bad input fails cleanly; `models` lists the registry."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from imbadv.tracking import names
from imbadv.cli import app, main
from imbadv.config import PRESETS, EvaluateConfig, TrainConfig
from imbadv.study.config import RUN_OPTIONS, NaturalConfig, StudyConfig, SweepConfig

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="session")
def small_data(synthetic_data):
    """These tests check the plumbing, not accuracy: synthetic images, no CIFAR-10 archive needed."""
    return synthetic_data


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(("command", "config"), [("train", TrainConfig), ("evaluate", EvaluateConfig)])
def test_every_config_field_is_a_kebab_case_option(command, config):
    help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"}).output
    for field in dataclasses.fields(config):
        assert "--" + field.name.replace("_", "-") in help_text


def test_mlproject_parameters_are_config_fields_without_second_defaults():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert spec["conda_env"] == "conda.yaml"
    for entry, config in (("train", TrainConfig), ("evaluate", EvaluateConfig), ("reproduce", StudyConfig),
                          ("sweep", SweepConfig), ("natural", NaturalConfig)):
        fields = {f.name for f in dataclasses.fields(config)}
        parameters = spec["entry_points"][entry]["parameters"]
        assert set(parameters) <= fields
        if config in (StudyConfig, SweepConfig, NaturalConfig):  # every option of what a study computes, but flags
            assert {f.name for f in dataclasses.fields(config) if f.name not in RUN_OPTIONS and f.type != "bool"} \
                <= set(parameters)
        assert all(p["default"] == "" for p in parameters.values())  # defaults live in config.py only
        for name in parameters:
            assert f"--{name.replace('_', '-')} {{{name}}}" in spec["entry_points"][entry]["command"]


def test_empty_mlproject_parameters_mean_the_config_default(monkeypatch):
    seen = {}
    monkeypatch.setattr("imbadv.jobs.train.run_train", lambda **options: seen.update(options))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--sampling", "", "--preset", "smoke", "--epochs", "", "--seed", "3"])
    assert exit_info.value.code == 0
    assert seen["sampling"] is None and seen["epochs"] is None
    assert seen["preset"] == "smoke" and seen["seed"] == 3


def assert_one_error_line(stderr: str, message: str) -> None:
    """The error is one line, the last one, with no traceback (MLflow's own INFO logs may precede it)."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("imbadv: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and message in errors[0], lines
    assert "Traceback" not in stderr


def _bad_inputs(data: Path, tmp: Path) -> list[tuple[list[str], str, bool]]:
    """(arguments, the error's message, whether a run had started when it was found)."""
    corrupt = tmp / "broken.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 this is not a real archive")
    not_a_tree = tmp / "flat"
    not_a_tree.mkdir()
    (not_a_tree / "cat.jpg").write_bytes(b"")
    base = ["--preset", "smoke", "--device", "cpu"]
    return [
        (["train", *base, "--data", str(data), "--sampling", "sideways"], "unknown --sampling 'sideways'", False),
        (["train", "--preset", "huge", "--data", str(data)], "unknown preset 'huge'", False),
        (["train", *base, "--data", str(data), "--sampling", "over"], "needs a class", False),
        (["evaluate", *base, "--data", str(data), "--eps", "-0.1"], "eps -0.1 is outside [0, 1]", False),
        (["evaluate", *base, "--data", str(data), "--eps", "1.5"], "eps 1.5 is outside [0, 1]", False),
        (["evaluate", *base, "--data", str(data), "--attack", "ifgsm", "--steps", "0"], "steps 0 is below 1", False),
        # found once the data is read, before a training's run starts
        (["train", *base, "--data", str(data), "--sampling", "under", "--class-id", "12"], "class id 12 is outside",
         False),
        (["train", *base, "--data", str(data), "--majority-count", "121"], "lower --majority-count to 120", False),
        (["train", *base, "--data", str(tmp / "nowhere")], "does not exist", False),
        (["train", *base, "--data", str(not_a_tree)], "is not an image-folder tree", False),
        (["train", *base, "--data", str(corrupt)], "is corrupted or not a .tar.gz", False),
        # found once the registry is read, inside the evaluation's run
        (["evaluate", *base, "--data", str(data), "--seed", "99"], "is not in the registry", True),
        (["evaluate", *base, "--data", str(data), "--source", "models:/imbadv-nothing@smoke-s0"],
         "is not in the registry", True),
    ]


@pytest.mark.slow
def test_bad_input_fails_with_one_line_and_only_a_started_run_is_marked_failed(store, small_data, session_cache,
                                                                               tmp_path):
    cases = _bad_inputs(small_data, tmp_path)
    client = MlflowClient()
    for args, message, started in cases:
        before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
        result = runner.invoke(app, [*args, "--cache-dir", str(session_cache)])
        assert result.exit_code == 1, (args, result.output)
        assert_one_error_line(result.stderr, message)
        after = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(after) == before + started, (args, "a bad option must not start a run")
    runs = client.search_runs(["1"])
    assert len(runs) == sum(started for *_, started in cases)
    assert all(r.info.status == "FAILED" and r.data.tags.get(names.TAG_ERROR) for r in runs)
    assert client.search_registered_models() == []


@pytest.mark.slow
def test_cifar10_without_internet_says_how_to_use_a_local_copy(store, tmp_path):
    result = runner.invoke(app, ["train", "--preset", "smoke", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert "could not download CIFAR-10" in result.stderr and "--data PATH" in result.stderr
    assert MlflowClient().search_registered_models() == []


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train", "--preset", "smoke"], ["models"], ["report", "--preset", "smoke"]])
def test_a_tracking_server_that_does_not_answer_fails_fast_with_one_line(command, small_data, tmp_path, monkeypatch):
    from tracking_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        result = runner.invoke(app, [*command, "--data", str(small_data)] if command[0] != "models" else command)
    finally:
        mlflow.set_tracking_uri(None)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, f"tracking server {uri} does not answer")
    assert "MLFLOW_TRACKING_URI" in result.stderr


@pytest.mark.slow
def test_models_lists_and_shows_registered_versions(store, small_data, session_cache):
    from imbadv.jobs.train import run_train

    run_train(preset="smoke", data=str(small_data), cache_dir=str(session_cache), device="cpu")
    listed = invoke("models")
    assert listed.exit_code == 0
    assert "imbadv-cifar10-small-balanced" in listed.output and "smoke-s0" in listed.output
    shown = json.loads(invoke("models", "show", "imbadv-cifar10-small-balanced", "--json").output)
    assert shown["versions"][0]["aliases"] == ["smoke-s0"]
    assert shown["versions"][0]["tags"]["preset"] == "smoke"
    assert 0 <= shown["versions"][0]["test_acc"] <= 1
    missing = invoke("models", "show", "imbadv-nothing")
    assert missing.exit_code == 1 and "not in the registry" in missing.stderr


def test_console_script_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "imbadv", "train", "--preset", "nope"], capture_output=True,
                            text=True, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
                                                          "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    expected = f"imbadv: error: unknown preset 'nope': use one of {', '.join(PRESETS)}"
    assert result.stderr.strip().splitlines()[-1] == expected


@pytest.mark.slow
def test_a_missing_cuda_device_is_a_one_line_error(store, small_data, session_cache, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["train", "--preset", "smoke", "--device", "cuda", "--data", str(small_data),
                                 "--cache-dir", str(session_cache)])
    assert result.exit_code == 1, result.output
    assert_one_error_line(result.stderr, "device 'cuda' asked for but no CUDA device is present: pass --device cpu")


def test_a_class_may_be_named_and_an_unknown_name_is_a_one_line_error(store, small_data, session_cache):
    result = runner.invoke(app, ["train", "--preset", "smoke", "--device", "cpu", "--data", str(small_data),
                                 "--sampling", "under", "--class-id", "kat", "--cache-dir", str(session_cache)])
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "unknown class 'kat': pass a class id (0-9 for CIFAR-10) or a CIFAR-10")
    from imbadv.config import parse_class_id
    from imbadv.study.config import StudyConfig

    assert parse_class_id("cat") == 3 and parse_class_id("Truck") == 9 and parse_class_id("5") == 5
    assert StudyConfig(classes="cat,dog").class_ids(10) == (3, 5)


def test_a_bad_option_fails_before_torch_and_mlflow_load():
    code = ("import sys\nfrom imbadv.cli import main\n"
            "try:\n    main(['train', '--sampling', 'Over', '--class-id', '3'])\nexcept SystemExit as e:\n"
            "    print('EXIT', e.code, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow'}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "EXIT 1 []" in result.stdout, result.stdout + result.stderr[-2000:]
    assert_one_error_line(result.stderr, "unknown --sampling 'Over': use balanced, under, over, longtail, step or "
                                         "natural")
