"""benchmarks/gpu_study.sh, dry-run on the CPU: a part of the study, its report and the timing JSON."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_study.sh"

pytestmark = pytest.mark.slow


def _run(data: Path | None, cache: Path, out: Path, *extra: str, cwd: Path | None = None,
         **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHON=sys.executable, IMBADV_CACHE=str(cache), **variables)
    data_option = [] if data is None else ["--data", str(data)]
    preflight = [] if "--preflight" in extra else ["--preflight", "0"]
    return subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--preset", "smoke", *data_option,
                           "--jobs", "1", "--out", str(out), *preflight, *extra],
                          env=env, capture_output=True, text=True, timeout=1200, check=False, cwd=cwd)


def test_dry_run_on_cpu_times_each_phase_and_extrapolates_a_part_to_the_whole(small_data, session_cache, tmp_path):
    # nvidia-smi's part is played by a sampler printing what `--query-gpu=utilization.gpu,memory.used
    # --format=csv,noheader,nounits -lms 1000` prints, until the script stops it
    sampler = tmp_path / "nvidia-smi"
    sampler.write_text("#!/usr/bin/env bash\nwhile true; do echo '40, 1000'; echo '60, 3000'; sleep 0.2; done\n")
    sampler.chmod(0o755)
    caller = tmp_path / "caller"  # where the script is called from: nothing of the study may land there
    caller.mkdir()
    result = _run(small_data, session_cache, tmp_path / "out", "--classes", "3", "--seeds", "2", "--preflight", "1",
                  "--jobs", "2", "--train-options", "stopping=val-loss", cwd=caller, NVIDIA_SMI=str(sampler))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list(caller.iterdir()) == [] and (tmp_path / "out" / "mlruns").is_dir()  # the artifacts are the store's
    study_store = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=study_store, registry_uri=study_store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trained_at = {f"{v.name}/{v.version}": client.get_run(v.run_id).info.end_time
                  for v in client.search_model_versions()}
    trainings = [r for r in runs if r.data.tags.get("imbadv.job") == "train"]
    assert len(trainings) == 6 and all(r.data.params["config.stopping"] == "val-loss" for r in trainings)
    assert sorted(int(r.data.params["config.seed"]) for r in trainings) == [0, 0, 0, 1, 1, 1]
    for run in (r for r in runs if r.data.tags.get("imbadv.job") == "evaluate"):  # each after its models
        models = {run.data.tags["imbadv.target"], run.data.tags["imbadv.source"]} - {"self"}
        assert all(trained_at[m] <= run.info.start_time for m in models), run.info.run_name
    timing = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert timing["preflight_s"] > 0 and "preflight: passed" in result.stdout
    with sqlite3.connect(tmp_path / "out" / "preflight.db") as scratch:  # the preflight ran in its own store
        assert scratch.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0] == 1
    assert timing["seeds"] == 2
    assert timing["phases"]["train"]["steps_finished"] == 6  # balanced, under-c3, over-c3 of each seed
    assert timing["phases"]["evaluate"]["steps_finished"] == 10
    assert timing["phases"]["train"]["steps_in_full_study"] == 42
    assert timing["phases"]["evaluate"]["steps_in_full_study"] == 82
    assert timing["extrapolated"] is True and "extrapolated" in timing["note"]
    train = timing["phases"]["train"]
    assert train["wall_s_full_study_estimate"] == pytest.approx(train["wall_s"] * 42 / 6, abs=0.2)
    assert timing["phases"]["report"]["wall_s"] > 0 and timing["total_wall_s_full_study"] > 0
    assert timing["train_images_per_s"] > 0 and 0 <= timing["balanced_test_acc"] <= 1
    per_seed = timing["balanced_test_acc_per_seed"]
    assert sorted(per_seed) == ["0", "1"]
    assert timing["balanced_test_acc"] == pytest.approx(sum(per_seed.values()) / 2)
    assert timing["train_images_per_s_all_jobs"] > 0
    assert timing["torch"] and timing["device"]
    assert timing["engine"] == "shared" and timing["onnx_providers"] == {"CPUExecutionProvider": 16}
    utilization = timing["gpu_utilization"]
    assert utilization["samples"] >= 2 and utilization["mean_pct"] == pytest.approx(50, abs=10)
    assert utilization["peak_memory_mib"] == 3000
    assert (tmp_path / "out" / "reports" / f"{small_data.name}-smoke" / "report.html").exists()
    with open(tmp_path / "out" / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    jobs = [row["imbadv.job"] for row in rows]
    assert jobs.count("train") == 6 and jobs.count("evaluate") == 10 and jobs.count("study") == 1
    assert all(row["status"] == "FINISHED" and float(row["run_s"]) > 0 for row in rows)
    assert all(0 <= float(row["clean_acc"]) <= 1 for row in rows if row["imbadv.job"] == "evaluate")


def test_a_failing_preflight_stops_before_the_study_starts(small_data, session_cache, tmp_path):
    # an environment that cannot train (here: a preset it does not know) fails in the preflight
    result = _run(small_data, session_cache, tmp_path / "out", "--classes", "3", "--preflight", "1",
                  "--preset", "no-such-preset")
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "preflight training failed" in result.stderr and "no-such-preset" in result.stderr
    assert "study: preset" not in result.stdout and not (tmp_path / "out" / "gpu_study.json").exists()
    with sqlite3.connect(tmp_path / "out" / "mlflow.db") as study_store:
        assert study_store.execute("select count(*) from runs").fetchone()[0] == 0


def test_a_budget_that_runs_out_stops_the_study_and_says_so(small_data, session_cache, tmp_path):
    # 2 s: the study is stopped before any step can finish, whatever the machine's speed
    result = _run(small_data, session_cache, tmp_path / "out", "--classes", "3", "--budget", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ran past its 2s budget" in result.stdout
    timing = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert timing["extrapolated"] is True and "report" not in timing["phases"]
    assert timing["phases"]["train"]["steps_finished"] == timing["phases"]["evaluate"]["steps_finished"] == 0
    assert timing["total_wall_s_full_study"] is None  # nothing to extrapolate from


def test_the_store_is_complete_before_the_budget_starts(small_data, session_cache, tmp_path):
    # A study stopped while MLflow creates a fresh store's tables leaves a store no command can open,
    # so the script makes them first. The wrapper records the store's schema as the timed study starts.
    seen = tmp_path / "schema-at-start"
    wrapper = tmp_path / "python"
    wrapper.write_text(f"""#!/usr/bin/env bash
if [[ " $* " == *" reproduce "* ]]; then
  "{sys.executable}" -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(
      'select version_num from alembic_version').fetchone()[0])" "${{MLFLOW_TRACKING_URI#sqlite:///}}" > "{seen}"
fi
exec "{sys.executable}" "$@"
""")
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHON=str(wrapper), IMBADV_CACHE=str(session_cache))
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--preset", "smoke", "--data", str(small_data),
                             "--jobs", "1", "--classes", "3", "--budget", "1", "--out", str(out), "--preflight", "0"],
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with sqlite3.connect(out / "mlflow.db") as store:
        final_schema = store.execute("select version_num from alembic_version").fetchone()[0]
    assert seen.read_text().strip() == final_schema


def test_a_kit_puts_its_wheels_on_the_path_and_supplies_the_data(small_data, session_cache, tmp_path):
    # A kit as gpu_kit.sh packs it: wheels/ (here the project's own wheel, built offline) and an archive.
    kit, source = tmp_path / "kit", tmp_path / "source"  # built from a copy: a build writes beside its source
    root = SCRIPT.parents[1]
    shutil.copytree(root / "imbadv", source / "imbadv", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(kit / "wheels"), str(source)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    with tarfile.open(kit / "small.tar.gz", "w:gz") as tar:
        for part in ("train", "test"):
            tar.add(small_data / part, arcname=part)
    result = _run(None, session_cache, tmp_path / "out", "--classes", "3", "--budget", "2", "--kit", str(kit))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"data {kit / 'small.tar.gz'}" in result.stdout
    assert list((tmp_path / "out" / "site").glob("imbadv-*.dist-info"))
    assert (tmp_path / "out" / "gpu_study.json").exists()


def test_a_folder_without_wheels_is_refused_before_anything_runs(tmp_path, session_cache):
    result = _run(None, session_cache, tmp_path / "out", "--kit", str(tmp_path))
    assert result.returncode == 2 and "has no wheels/" in result.stderr and "gpu_kit.sh" in result.stderr
    assert not (tmp_path / "out" / "mlflow.db").exists()


def _grouped_runs(out: Path) -> list:
    study_store = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=study_store, registry_uri=study_store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`imbadv.group_size` = '2'")


def test_a_grouped_study_checks_its_training_group_in_the_preflight(small_data, session_cache, tmp_path):
    # a least ratio of 0: the group is kept however fast this machine runs it
    result = _run(small_data, session_cache, tmp_path / "out", "--classes", "3,5", "--preflight", "1",
                  "--group-trainings", "2", GROUP_CHECK_WIDTH="4", GROUP_CHECK_MIN_RATIO="0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = (tmp_path / "out" / "bench_group.txt").read_text()
    assert "loop" in check and "group" in check and "img/s" in check
    assert len(_grouped_runs(tmp_path / "out")) == 4  # under-c3 with under-c5, over-c3 with over-c5
    timing = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert timing["group_trainings"] == 2 and timing["group_check"]["fallback"] is None
    assert timing["group_check"]["models"] == 2 and timing["group_check"]["group_vs_loop"] > 0


def test_a_group_slower_than_one_model_at_a_time_is_not_used(small_data, session_cache, tmp_path):
    # a least ratio no group reaches: the study trains one model at a time, and says why
    result = _run(small_data, session_cache, tmp_path / "out", "--classes", "3,5", "--preflight", "1",
                  "--group-trainings", "2", GROUP_CHECK_WIDTH="4", GROUP_CHECK_MIN_RATIO="1000")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "under 1000: the study trains one model at a time" in result.stderr
    assert "--group-trainings 1" in result.stdout and not _grouped_runs(tmp_path / "out")
    timing = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert timing["group_trainings"] == 1 and "under 1000" in timing["group_check"]["fallback"]
    assert timing["group_check"]["group_vs_loop"] < 1000
    assert timing["phases"]["train"]["steps_finished"] == 5


def test_a_failing_group_check_still_yields_a_study(small_data, session_cache, tmp_path):
    # a width bench_group.py refuses makes the check fail; the budget stops the study at once
    result = _run(small_data, session_cache, tmp_path / "out", "--classes", "3,5", "--preflight", "1",
                  "--group-trainings", "2", "--budget", "2", GROUP_CHECK_WIDTH="none")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "training-group check failed" in result.stderr and "one model at a time" in result.stderr
    assert "study: preset smoke" in result.stdout and "--group-trainings 1" in result.stdout
    timing = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert timing["group_trainings"] == 1 and "check failed" in timing["group_check"]["fallback"]
    assert "group_vs_loop" not in timing["group_check"]
