"""The cluster manifests under deploy/ run the command the README's "On a cluster" section gives."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _readme_command() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## On a cluster", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in section.splitlines() if line.startswith("imbadv reproduce")]
    return shlex.split(line)


def test_the_rayjob_manifest_runs_the_readmes_study_on_a_ray_cluster():
    job = yaml.safe_load((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert shlex.split(job["spec"]["entrypoint"]) == _readme_command()
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http://")  # a shared server, not a local store
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert all("nvidia.com/gpu" in w["template"]["spec"]["containers"][0]["resources"]["limits"] for w in workers)


def test_the_sbatch_script_starts_ray_on_the_allocation_and_runs_the_readmes_study():
    script = ROOT / "deploy" / "slurm-study.sbatch"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0  # parses as bash
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("imbadv ")]
    assert commands == [_readme_command()]
    assert re.search(r"ray start --head", text) and re.search(r"ray start --address=\"\$RAY_ADDRESS\"", text)
    assert text.index("ray start --head") < text.index("imbadv reproduce")
    assert "export RAY_ADDRESS" in text and "MLFLOW_TRACKING_URI:?" in text
