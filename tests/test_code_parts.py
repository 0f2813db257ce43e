"""A step's reuse key hashes only the code that decides its result: editing the report, an attack, the
study engine, the CLI or the docs keeps every finished training; editing the trainer retrains."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import complete

from imbadv.tracking import names, provenance

PACKAGE = provenance.PACKAGE_DIR
EDITS_THAT_KEEP_TRAININGS = ("report/analysis.py", "core/attacks.py", "study/engine.py", "cli.py",
                             "tracking/registry.py", "jobs/train.py")


def _copy(tmp_path: Path) -> Path:
    """A copy of the imbadv package to edit, importable from its parent folder."""
    copy = tmp_path / "src" / "imbadv"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _edit(package: Path, module: str) -> None:
    with open(package / module, "a") as handle:
        handle.write("\n# an edit\n")


def test_each_part_follows_its_own_modules_only(tmp_path):
    package = _copy(tmp_path)
    before = {part: provenance.code_version(package, part) for part in provenance.CODE_PARTS}
    whole = provenance.code_version(package)
    for module in ("report/analysis.py", "study/engine.py", "cli.py", "tracking/registry.py"):
        _edit(package, module)
    (package.parent / "README.md").write_text("docs\n")
    assert {part: provenance.code_version(package, part) for part in provenance.CODE_PARTS} == before
    assert provenance.code_version(package) != whole  # the package's own version sees every edit
    _edit(package, "core/attacks.py")
    assert provenance.code_version(package, "train") == before["train"]
    assert provenance.code_version(package, "evaluate") != before["evaluate"]
    _edit(package, "core/trainer.py")
    assert provenance.code_version(package, "train") != before["train"]


def _core_imports(module: Path) -> set[str]:
    """The imbadv.core modules a file imports, as paths under imbadv/ (core/inference.py)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imbadv.core"):
            names_ = [node.module] if node.module != "imbadv.core" else [f"imbadv.core.{a.name}" for a in node.names]
            found |= {name.removeprefix("imbadv.").replace(".", "/") + ".py" for name in names_}
    return found


@pytest.mark.parametrize("part", sorted(provenance.CODE_PARTS))
def test_each_part_holds_every_core_module_its_modules_import(part):
    """A new dependency of the trainer (or the attacks) cannot be left out of what its key hashes.
    config.py's values, not its code, decide a training: the key holds the resolved config."""
    modules = set(provenance.CODE_PARTS[part])
    for module in modules:
        missing = _core_imports(PACKAGE / module) - modules
        assert not missing, f"{module} imports {sorted(missing)}, outside CODE_PARTS[{part!r}]"


def _reproduce(source: Path, store: str, data: Path, cache: Path, output: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": store, "IMBADV_CACHE": str(cache), "PYTHONPATH": str(source)}
    with output.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data",
                                    str(data), "--classes", "3", "--device", "cpu"], env=env, cwd=output.parent,
                                   stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return complete(process, output)


@pytest.mark.slow
def test_a_study_reuses_its_trainings_after_edits_elsewhere_and_retrains_after_a_trainer_edit(
        store, synthetic_data, session_cache, tmp_path):
    package = _copy(tmp_path)
    first = _reproduce(package.parent, store, synthetic_data, session_cache, tmp_path / "first.log")
    assert "8 steps ran, 0 reused" in first, first[-2000:]
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    trainings = client.search_runs(experiments, f"tags.`{names.TAG_JOB}` = 'train'")
    evaluations = client.search_runs(experiments, f"tags.`{names.TAG_JOB}` = 'evaluate'")
    expected = {part: provenance.code_version(package, part) for part in provenance.CODE_PARTS}
    assert {r.data.tags[names.TAG_TRAIN_CODE_VERSION] for r in trainings} == {expected["train"]}
    assert {r.data.tags[names.TAG_EVALUATE_CODE_VERSION] for r in evaluations} == {expected["evaluate"]}

    for module in EDITS_THAT_KEEP_TRAININGS:
        _edit(package, module)
    edited = _reproduce(package.parent, store, synthetic_data, session_cache, tmp_path / "edited.log")
    assert "5 steps ran, 3 reused" in edited, edited[-2000:]  # the attacks changed: evaluations only

    _edit(package, "core/trainer.py")
    retrained = _reproduce(package.parent, store, synthetic_data, session_cache, tmp_path / "retrained.log")
    assert "8 steps ran, 0 reused" in retrained, retrained[-2000:]
    versions = client.search_model_versions(f"name = 'imbadv-{synthetic_data.name}-balanced'")
    assert len(versions) == 2  # one per trainer version
