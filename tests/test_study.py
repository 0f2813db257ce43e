"""The study: its plan, reuse of finished steps, a killed study completed by a rerun, and its report."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imbadv import tracking
from imbadv.config import ConfigError
from imbadv.study import StudyConfig, plan


def test_plan_has_the_papers_21_models_and_41_evaluations_per_seed_and_eps():
    steps = plan(StudyConfig(preset="smoke"), 10, "digest", "commit")
    trainings = [s for s in steps if s.entry == "train"]
    evaluations = [s for s in steps if s.entry == "evaluate"]
    assert len(trainings) == 21 and len(evaluations) == 41
    assert Counter(dict(s.options)["source"] for s in evaluations) == {"self": 21, "balanced": 20}
    assert len({s.key for s in steps}) == len(steps)
    sweep = plan(StudyConfig(preset="smoke", seeds=2, eps="0.01,0.03"), 10, "digest", "commit")
    assert sum(s.entry == "train" for s in sweep) == 42 and sum(s.entry == "evaluate" for s in sweep) == 164
    assert {s.key for s in plan(StudyConfig(preset="smoke"), 10, "digest", "other-commit")}.isdisjoint(
        {s.key for s in steps})  # a new code version reruns
    assert len(plan(StudyConfig(preset="smoke", classes="3,5"), 10, "d", "c")) == 5 + 9


@pytest.mark.parametrize(("options", "message"), [
    ({"eps": "0.01,abc"}, "not a number"), ({"eps": "2"}, "eps 2.0 is outside"), ({"classes": "12"}, "outside"),
    ({"preset": "nope"}, "unknown preset"), ({"jobs": 0}, "must be 1 or more")])
def test_bad_study_options(options, message):
    with pytest.raises(ConfigError, match=message):
        plan(StudyConfig(**options), 10, "d", "c")


def _reproduce(store: str, data: Path, cache: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "IMBADV_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data", str(data),
                             "--classes", "3,5", "--device", "cpu", *extra], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finished_steps(client: MlflowClient) -> list[str]:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.status = 'FINISHED'")
    return [r.data.tags[tracking.TAG_STEP_KEY] for r in runs if tracking.TAG_STEP_KEY in r.data.tags]


@pytest.mark.slow
def test_killed_study_completes_on_rerun_without_duplicates_then_reports(store, small_data, session_cache, tmp_path):
    client = MlflowClient()
    first = _reproduce(store, small_data, session_cache, tmp_path)
    deadline = time.monotonic() + 300
    while len(_finished_steps(client)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, first.communicate()[0][-3000:]  # still running: kill it part-way
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = len(_finished_steps(client))
    assert 2 <= done_before < 14

    second = _reproduce(store, small_data, session_cache, tmp_path)
    output = second.communicate(timeout=900)[0]
    assert second.returncode == 0, output[-3000:]
    assert f"{14 - done_before} steps ran, {done_before} reused" in output

    keys = _finished_steps(client)
    assert len(keys) == 14 and len(set(keys)) == 14  # every step once
    experiments = [e.experiment_id for e in client.search_experiments()]
    leftovers = client.search_runs(experiments, filter_string="attributes.status != 'FINISHED'")
    assert [r for r in leftovers if r.data.tags.get(tracking.TAG_JOB) != "study"] == []
    for name in ("balanced", "under-c3", "over-c3", "under-c5", "over-c5"):
        versions = client.search_model_versions(f"name = 'imbadv-cifar10-small-{name}'")
        assert len(versions) == 1, name  # no duplicate registry versions
    studies = client.search_runs(experiments, filter_string=f"tags.`{tracking.TAG_JOB}` = 'study'")
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == studies[0].info.run_id
               for r in client.search_runs(experiments, filter_string="attributes.status = 'FINISHED'")
               if tracking.TAG_STEP_KEY in r.data.tags)

    third = _reproduce(store, small_data, session_cache, tmp_path)
    assert "0 steps ran, 14 reused" in third.communicate(timeout=300)[0]

    _check_report(store, small_data, tmp_path, client, studies[0].info.run_id)


def _check_report(store: str, data: Path, cwd: Path, client: MlflowClient, study_run_id: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    result = subprocess.run([sys.executable, "-m", "imbadv", "report", "--preset", "smoke", "--data", str(data)],
                            env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = cwd / "reports" / "cifar10-small-smoke"
    assert {"table1.csv", "table1.md", "claims.csv", "beyond.csv", "report.md", "report.html",
            "fig3_clean_accuracy.png", "fig5_relative_drop.png", "fig7_confusions.png"} <= {
        p.name for p in folder.iterdir()}
    assert "Table 1" in result.stdout and "cat" in result.stdout
    # The cat row's white-box under-sampled cell is the under-c3 white-box run's adv_acc_c3.
    import csv

    cat = next(row for row in csv.DictReader((folder / "table1.csv").open()) if row["class_name"] == "cat")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string=(
        "params.`config.sampling` = 'under' and params.`config.class_id` = '3' and params.`config.source` = 'self'"))[0]
    assert float(cat["whitebox_undersample_ours"]) == pytest.approx(run.data.metrics["adv_acc_c3"])
    assert float(cat["whitebox_undersample_paper"]) == pytest.approx(0.005)
    report_artifacts = {a.path for a in client.list_artifacts(study_run_id, "report")}
    assert "report/report.html" in report_artifacts
    _check_html_in_chromium(folder / "report.html")


def _check_html_in_chromium(page: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed for the report test: apt-get install chromium (.ci/run does)"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run",
                             f"--user-data-dir={page.parent / '.chromium'}", "--virtual-time-budget=5000",
                             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert '<table id="table1">' in dom and "<td>cat</td>" in dom
    assert 'data-images-total="3"' in dom and 'data-images-loaded="3"' in dom, dom[-2000:]


def test_a_second_identical_study_on_this_machine_is_refused(tmp_path):
    from imbadv.study import StudyFailed, _exclusive

    lock = tmp_path / "locks" / "study.lock"
    held = "another `imbadv reproduce` with the same settings is running"
    with _exclusive(lock), pytest.raises(StudyFailed, match=held), _exclusive(lock):  # the second take fails
        pass
    with _exclusive(lock):  # released when the first study ends
        pass
