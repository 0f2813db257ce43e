"""The package's layers: the pure torch core knows nothing of MLflow, and each layer imports only those below it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imbadv"

# layer -> the imbadv layers its modules may import (config, and interrupt for the commands that own
# processes, are the bottom modules, imported by all)
BOTTOM = {"config", "interrupt"}
ALLOWED = {
    "core": BOTTOM | {"core"},
    "tracking": BOTTOM | {"core", "tracking"},
    "jobs": BOTTOM | {"core", "tracking", "jobs"},
    "study": BOTTOM | {"core", "tracking", "jobs", "study"},
    "report": BOTTOM | {"core", "tracking", "report"},
}


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}  # a module of a package, maybe
    return modules


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    for path in sorted((PACKAGE / layer).glob("*.py")):
        layers = {m.split(".")[1] for m in _imported_modules(path) if m.startswith("imbadv.")}
        assert layers <= ALLOWED[layer], f"{path.relative_to(PACKAGE.parent)} imports imbadv.{layers - ALLOWED[layer]}"


def _cycle(folder: Path, package: str) -> list[str]:
    """An import cycle among the modules of one package folder (each name once, then the first again), or []."""
    modules = {path.stem: path for path in folder.glob("*.py") if path.stem != "__init__"}
    imports = {name: sorted({m.removeprefix(package + ".").split(".")[0] for m in _imported_modules(path)
                             if m.startswith(package + ".")} & set(modules) - {name})
               for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str]:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return []
        for imported in imports[name]:
            if found := visit(imported, [*path, name]):
                return found
        done.add(name)
        return []

    return next((found for name in sorted(modules) if (found := visit(name, []))), [])


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_has_an_import_cycle_inside_it(layer):
    assert _cycle(PACKAGE / layer, f"imbadv.{layer}") == []


def test_the_cycle_check_sees_a_cycle(tmp_path):
    (tmp_path / "engine.py").write_text("from imbadv.study import executor\n")
    (tmp_path / "executor.py").write_text("def f():\n    from imbadv.study.engine import run\n")
    (tmp_path / "plan.py").write_text("import json\n")
    assert _cycle(tmp_path, "imbadv.study") == ["engine", "executor", "engine"]


def test_the_core_and_the_configs_import_no_mlflow():
    for path in [PACKAGE / "config.py", *sorted((PACKAGE / "core").glob("*.py"))]:
        third_party = {m.split(".")[0] for m in _imported_modules(path)}
        assert "mlflow" not in third_party, f"{path.relative_to(PACKAGE.parent)} imports mlflow"
    assert not {m for m in _imported_modules(PACKAGE / "config.py") if m.startswith("imbadv")}


def test_the_layer_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from imbadv.tracking import names\n    from imbadv import study\n")
    assert {"imbadv.tracking", "imbadv.study"} <= _imported_modules(bad)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["reproduce", "--help"],
                                  ["report", "--help"], ["models", "--help"],
                                  ["ui", "--help"]])
def test_help_imports_neither_mlflow_nor_torch(args):
    code = ("import sys\nfrom imbadv.cli import main\nsys.argv = ['imbadv', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'torch', 'numpy', 'onnxruntime'})\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert "Usage" in result.stdout, result.stderr[-2000:]
    assert "HEAVY []" in result.stderr, result.stderr[-2000:]


WRITE = re.compile(r"^(log_\w+|set_tags?|set_registered_model_alias|delete_\w+|create_\w+|update_\w+|"
                   r"register_model|start_run|end_run)$")


def _unretried_writes(path: Path) -> list[str]:
    """MLflow writes called directly rather than through `store.call` (which retries a locked store)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and WRITE.match(node.func.attr):
            receiver = ast.unparse(node.func.value)
            if receiver.split(".")[0] == "mlflow" or receiver in ("client", "MlflowClient()"):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_every_mlflow_write_goes_through_the_retried_path():
    paths = [p for p in PACKAGE.rglob("*.py") if p.name != "store.py"]  # store.py is the retried path
    assert [w for p in paths for w in _unretried_writes(p)] == []


def test_the_write_check_sees_a_direct_write(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("mlflow.log_metrics({})\nclient.delete_run('x')\nstore.call(mlflow.log_metrics, {})\n")
    assert _unretried_writes(bad) == ["bad.py:1 mlflow.log_metrics", "bad.py:2 client.delete_run"]


def _writes_outside_the_log_module(path: Path) -> list[str]:
    """MLflow writes named in a module: any `store.call`, any MLflow write function called or passed on."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        receiver = ast.unparse(node.value)
        mlflow_object = receiver.split(".")[0] == "mlflow" or receiver in ("client", "MlflowClient()")
        if (receiver == "store" and node.attr == "call") or (WRITE.match(node.attr) and mlflow_object):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_jobs_study_and_report_write_to_mlflow_only_through_the_tracking_layer():
    """Names and retries live in one place: the other layers call `tracking.log`, `lifecycle` or `registry`."""
    paths = [p for layer in ("jobs", "study", "report") for p in sorted((PACKAGE / layer).glob("*.py"))]
    paths += [PACKAGE / "cli.py"]
    assert [w for p in paths for w in _writes_outside_the_log_module(p)] == []


def test_the_log_module_check_sees_a_write(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("store.call(mlflow.set_tag, 'k', 'v')\nlog.metrics({})\nMlflowClient().log_artifacts('r', 'f')\n")
    assert _writes_outside_the_log_module(bad) == ["bad.py:1 store.call", "bad.py:1 mlflow.set_tag",
                                                   "bad.py:3 MlflowClient().log_artifacts"]


def test_tag_names_are_spelled_only_in_the_names_module():
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "names.py":
            continue
        spelled += [f"{path.name}:{node.lineno} {node.value}" for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value.startswith("imbadv.") and " " not in node.value]
    assert spelled == []
