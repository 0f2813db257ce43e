"""The study: its plan, reuse of finished steps, a killed study completed by a rerun, and its report."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
import typing
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from conftest import complete

from imbadv.tracking import names
from imbadv.config import ConfigError
from imbadv.study.config import StudyConfig
from imbadv.study.plan import plan
from imbadv.tracking.provenance import CODE_PARTS

COMMIT = dict.fromkeys(CODE_PARTS, "commit")


def test_plan_has_the_papers_21_models_and_41_evaluations_per_seed_and_eps():
    steps = plan(StudyConfig(preset="smoke"), 10, "digest", COMMIT)
    trainings = [s for s in steps if s.entry == "train"]
    evaluations = [s for s in steps if s.entry == "evaluate"]
    assert len(trainings) == 21 and len(evaluations) == 41
    assert Counter(dict(s.options)["source"] for s in evaluations) == {"self": 21, "balanced": 20}
    assert len({s.key for s in steps}) == len(steps)
    sweep = plan(StudyConfig(preset="smoke", seeds=2, eps="0.01,0.03"), 10, "digest", COMMIT)
    assert sum(s.entry == "train" for s in sweep) == 42 and sum(s.entry == "evaluate" for s in sweep) == 164
    assert {s.key for s in plan(StudyConfig(preset="smoke"), 10, "digest", dict.fromkeys(CODE_PARTS, "other"))
            }.isdisjoint({s.key for s in steps})  # a new code version reruns
    assert len(plan(StudyConfig(preset="smoke", classes="3,5"), 10, "d", COMMIT)) == 5 + 9


def test_a_steps_key_follows_only_the_code_of_its_own_entry_point():
    steps = plan(StudyConfig(preset="smoke", classes="3"), 10, "d", COMMIT)
    new_attacks = plan(StudyConfig(preset="smoke", classes="3"), 10, "d", {**COMMIT, "evaluate": "edited"})
    new_trainer = plan(StudyConfig(preset="smoke", classes="3"), 10, "d", {**COMMIT, "train": "edited"})
    for entry, kept, rerun in (("train", new_attacks, new_trainer), ("evaluate", new_trainer, new_attacks)):
        keys = [s.key for s in steps if s.entry == entry]
        assert [s.key for s in kept if s.entry == entry] == keys
        assert {s.key for s in rerun if s.entry == entry}.isdisjoint(keys)


def test_every_spelling_of_a_data_path_is_one_study_and_one_training(tmp_path, monkeypatch):
    from imbadv.config import resolve_train_config
    from imbadv.tracking.provenance import train_key

    (tmp_path / "data").mkdir()
    archive = tmp_path / "data" / "set.tar.gz"
    archive.write_bytes(b"")
    (tmp_path / "link.tar.gz").symlink_to(archive)
    monkeypatch.chdir(tmp_path / "data")
    spellings = [str(archive), "set.tar.gz", f"{tmp_path}/data/../data/set.tar.gz", str(tmp_path / "link.tar.gz")]
    studies = [StudyConfig(preset="smoke", classes="3", data=data) for data in spellings]
    assert {s.data for s in studies} == {str(archive.resolve())}
    assert len({s.key for config in studies for s in plan(config, 10, "d", COMMIT)}) == len(plan(studies[0], 10, "d",
                                                                                                  COMMIT))
    assert len({train_key(resolve_train_config(preset="smoke", data=data)) for data in spellings}) == 1
    assert StudyConfig(data="cifar10").data == "cifar10"  # a name, not a path

@pytest.mark.parametrize(("options", "message"), [
    ({"eps": "0.01,abc"}, "not a number"), ({"eps": "2"}, "eps 2.0 is outside"), ({"classes": "12"}, "outside"),
    ({"preset": "nope"}, "unknown preset"), ({"jobs": 0}, "must be 1 or more")])
def test_bad_study_options(options, message):
    with pytest.raises(ConfigError, match=message):
        plan(StudyConfig(**options), 10, "d", COMMIT)


def test_train_options_reach_every_training_of_the_study_and_only_the_trainings():
    """An ablation study: one changed training option, the same evaluations, a study of its own."""
    config = StudyConfig(preset="smoke", classes="3", train_options="init=torch, stopping=val-loss,epochs=3")
    steps = plan(config, 10, "d", COMMIT)
    trainings = [dict(s.options) for s in steps if s.entry == "train"]
    assert len(trainings) == 3 and all(t["init"] == "torch" and t["stopping"] == "val-loss" and t["epochs"] == 3
                                       for t in trainings)
    assert all("init" not in dict(s.options) for s in steps if s.entry == "evaluate")
    default_keys = {s.key for s in plan(StudyConfig(preset="smoke", classes="3"), 10, "d", COMMIT)}
    assert default_keys.isdisjoint(s.key for s in steps if s.entry == "train")


@pytest.mark.parametrize(("options", "message"), [
    ("init", "not KEY=VALUE"), ("colour=red", "not KEY=VALUE with a train option"),
    ("seed=3", "not KEY=VALUE with a train option"), ("epochs=many", "epochs=many is not an int"),
    ("channels_last=maybe", "is not true or false"), ("init=he", "unknown --init 'he': use keras or torch")])
def test_bad_train_options_stop_the_study_before_it_starts(options, message):
    with pytest.raises(ConfigError, match=message):
        StudyConfig(preset="smoke", train_options=options)


STEPS = 14  # --classes 3,5: 5 trainings and 9 evaluations
MODELS = ("balanced", "under-c3", "over-c3", "under-c5", "over-c5")


def _env(store: str, cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": store, **({"IMBADV_CACHE": str(cache)} if cache else {})}


def _reproduce(store: str, data: Path, cache: Path, cwd: Path, output: Path, *extra: str) -> subprocess.Popen:
    """The smoke study of classes 3 and 5, its output going to the file `output`."""
    with output.open("w") as log:  # a file, not a pipe: a pipe nobody reads while the study runs can fill up
        return subprocess.Popen([sys.executable, "-m", "imbadv", "reproduce", "--preset", "smoke", "--data", str(data),
                                 "--classes", "3,5", "--device", "cpu", *extra], env=_env(store, cache), cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _client(store: str) -> MlflowClient:
    return MlflowClient(tracking_uri=store, registry_uri=store)


def _experiments(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _finished_steps(client: MlflowClient) -> list[str]:
    runs = client.search_runs(_experiments(client), filter_string="attributes.status = 'FINISHED'")
    return [r.data.tags[names.TAG_STEP_KEY] for r in runs if names.TAG_STEP_KEY in r.data.tags]


def _study_runs(client: MlflowClient) -> list:
    return client.search_runs(_experiments(client), filter_string=f"tags.`{names.TAG_JOB}` = 'study'")


@pytest.mark.slow
def test_a_killed_study_completes_on_rerun_with_every_step_once(store, small_data, session_cache, tmp_path,
                                                                 sigkill_group):
    client = _client(store)
    first = _reproduce(store, small_data, session_cache, tmp_path, tmp_path / "first.log")
    deadline = time.monotonic() + 1200  # a safety net, not a pace: the kill point is the event below
    while len(_finished_steps(client)) < 2:  # part-way: once two steps are FINISHED
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the study finished no 2 steps in 1200 s"
        time.sleep(0.2)
    sigkill_group(first)
    done = len(_finished_steps(client))  # read after the kill: what the rerun finds FINISHED
    assert done < STEPS, "the study was not part-way when killed"
    left_running = [r.info.run_id for r in client.search_runs(_experiments(client), "attributes.status = 'RUNNING'")
                    if names.TAG_TRAIN_KEY in r.data.tags]  # a training the kill interrupted: to be resumed

    output = complete(_reproduce(store, small_data, session_cache, tmp_path, tmp_path / "rerun.log"),
                       tmp_path / "rerun.log")
    assert f"{STEPS - done} steps ran, {done} reused" in output

    keys = _finished_steps(client)
    assert len(keys) == STEPS and len(set(keys)) == STEPS  # every step once
    assert all(client.get_run(run_id).info.status == "FINISHED" for run_id in left_running)  # continued, not redone
    leftovers = client.search_runs(_experiments(client), filter_string="attributes.status != 'FINISHED'")
    assert [(r.info.run_name, r.info.status) for r in leftovers] == []  # the study's own run is FINISHED too
    for model in MODELS:
        versions = client.search_model_versions(f"name = 'imbadv-{small_data.name}-{model}'")
        assert len(versions) == 1, model  # no duplicate registry versions
    (study,) = _study_runs(client)  # the rerun reopened the killed study's run
    steps = [r for r in client.search_runs(_experiments(client)) if names.TAG_STEP_KEY in r.data.tags]
    assert len(steps) == STEPS and {r.data.tags["mlflow.parentRunId"] for r in steps} == {study.info.run_id}


@pytest.fixture(scope="module")
def finished_study(module_store, small_data, session_cache, tmp_path_factory) -> SimpleNamespace:
    """One smoke study run to its end, shared by the checks of a finished study and of its report."""
    cwd = tmp_path_factory.mktemp("study")
    output = complete(_reproduce(module_store, small_data, session_cache, cwd, cwd / "study.log"),
                       cwd / "study.log")
    assert f"{STEPS} steps ran, 0 reused" in output
    client = _client(module_store)
    (study,) = _study_runs(client)
    return SimpleNamespace(store=module_store, cwd=cwd, client=client, run_id=study.info.run_id)


@pytest.fixture(scope="module")
def report(finished_study, small_data) -> SimpleNamespace:
    """`imbadv report` on the finished study."""
    result = subprocess.run([sys.executable, "-m", "imbadv", "report", "--preset", "smoke", "--data", str(small_data)],
                            env=_env(finished_study.store), cwd=finished_study.cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(stdout=result.stdout, folder=finished_study.cwd / "reports" / f"{small_data.name}-smoke")


@pytest.mark.slow
def test_a_rerun_of_a_finished_study_reuses_every_step(finished_study, small_data, session_cache):
    log = finished_study.cwd / "again.log"
    output = complete(_reproduce(finished_study.store, small_data, session_cache, finished_study.cwd, log), log)
    assert f"study run {finished_study.run_id}: 0 steps ran, {STEPS} reused" in output


@pytest.mark.slow
def test_a_wider_study_counts_what_it_reuses_before_any_step_runs(store, small_data, session_cache, tmp_path):
    """A second eps on a finished study: its progress starts at the first study's 3 trainings and 5
    evaluations (class 3), not at the trainings alone while the new evaluations wait."""
    first, wider = tmp_path / "first.log", tmp_path / "wider.log"
    complete(_reproduce(store, small_data, session_cache, tmp_path, first, "--classes", "3"), first)
    output = complete(_reproduce(store, small_data, session_cache, tmp_path, wider, "--classes", "3",
                                 "--eps", "0.01,0.02"), wider)
    progress = re.findall(r"study: .*?(\d+)/(\d+) \[", output)
    assert progress[0] == ("8", "13"), progress[:3]
    assert "5 steps ran, 8 reused" in output


@pytest.mark.slow
def test_the_shared_engine_ran_every_step_and_the_isolated_one_completes_the_same_study(finished_study, small_data,
                                                                                          session_cache):
    client = finished_study.client
    steps = [r for r in client.search_runs(_experiments(client)) if names.TAG_STEP_KEY in r.data.tags]
    assert {r.data.tags[names.TAG_ENGINE] for r in steps} == {"shared"}
    assert {r.data.tags[names.TAG_ONNX_PROVIDER] for r in steps} == {"CPUExecutionProvider"}
    evaluations = [r for r in steps if r.data.tags[names.TAG_JOB] == "evaluate"]
    assert len({r.data.tags[names.TAG_PID] for r in evaluations}) == 1  # one worker (--jobs 1) ran them all
    log = finished_study.cwd / "isolated.log"
    output = complete(_reproduce(finished_study.store, small_data, session_cache, finished_study.cwd, log,
                                 "--engine", "isolated"), log)
    assert f"study run {finished_study.run_id}: 0 steps ran, {STEPS} reused" in output


@pytest.mark.slow
def test_the_report_writes_its_files_and_table_1(report):
    assert {"table1.csv", "table1.md", "claims.csv", "beyond.csv", "report.md", "report.html", "results.json",
            "fig3_clean_accuracy.png", "fig5_relative_drop.png", "fig7_confusions.png"} <= {
        p.name for p in report.folder.iterdir()}
    assert "Table 1" in report.stdout and "cat" in report.stdout


@pytest.mark.slow
def test_the_reports_cat_row_holds_the_under_c3_white_box_runs_cat_accuracy(report, finished_study):
    with (report.folder / "table1.csv").open(newline="") as handle:
        cat = next(row for row in csv.DictReader(handle) if row["class_name"] == "cat")
    (run,) = finished_study.client.search_runs(_experiments(finished_study.client), filter_string=(
        "params.`config.sampling` = 'under' and params.`config.class_id` = '3' and params.`config.source` = 'self'"))
    assert float(cat["whitebox_undersample_ours"]) == pytest.approx(run.data.metrics["adv_acc_c3"])
    assert float(cat["whitebox_undersample_paper"]) == pytest.approx(0.005)


@pytest.mark.slow
def test_the_reports_results_file_gives_the_same_report_without_the_store(report, tmp_path):
    """results.json is the data behind the report: reported again in an empty store, the same tables."""
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = subprocess.run([sys.executable, "-m", "imbadv", "report", "--results", str(report.folder / "results.json"),
                             "--output-dir", str(tmp_path / "again")], env=_env(empty), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    again = tmp_path / "again" / report.folder.name
    for name in ("table1.csv", "table1.md", "beyond.csv", "claims.csv", "results.json"):
        assert (again / name).read_text() == (report.folder / name).read_text(), name


@pytest.mark.slow
def test_the_report_is_attached_to_the_study_run(report, finished_study):
    attached = {a.path for a in finished_study.client.list_artifacts(finished_study.run_id, "report")}
    assert {"report/report.html", "report/table1.csv"} <= attached


@pytest.mark.slow
def test_the_reports_html_renders_in_headless_chromium(report):
    _check_html_in_chromium(report.folder / "report.html")


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
    from imbadv.study.engine import StudyFailed, _exclusive

    lock = tmp_path / "locks" / "study.lock"
    held = "another study \\(or sweep\\) with the same settings is running"
    with _exclusive(lock), pytest.raises(StudyFailed, match=held), _exclusive(lock):  # the second take fails
        pass
    with _exclusive(lock):  # released when the first study ends
        pass


@pytest.mark.slow
def test_a_study_with_training_groups_trains_each_kind_side_by_side(store, small_data, session_cache, tmp_path):
    log = tmp_path / "grouped.log"
    output = complete(_reproduce(store, small_data, session_cache, tmp_path, log, "--group-trainings", "2"), log)
    assert f"{STEPS} steps ran, 0 reused" in output
    client = _client(store)
    trainings = {r.info.run_name: r for r in client.search_runs(_experiments(client), "tags.`imbadv.job` = 'train'")}
    assert {name: r.data.tags.get(names.TAG_GROUP_SIZE) for name, r in trainings.items()} == {
        "train-balanced-smoke-s0": None, "train-under-c3-smoke-s0": "2", "train-under-c5-smoke-s0": "2",
        "train-over-c3-smoke-s0": "2", "train-over-c5-smoke-s0": "2"}
    assert all(r.info.status == "FINISHED" for r in trainings.values())
    under = [trainings[f"train-under-c{c}-smoke-s0"] for c in (3, 5)]
    assert under[0].data.tags[names.TAG_PID] == under[1].data.tags[names.TAG_PID]  # one worker, side by side
    for model in MODELS:
        assert len(client.search_model_versions(f"name = 'imbadv-{small_data.name}-{model}'")) == 1, model
    logs = session_cache / "logs"
    keys = {r.data.tags[names.TAG_STEP_KEY] for r in under}
    assert len({(logs / f"{key}.log").stat().st_ino for key in keys}) == 1  # one log, under each step's key


def test_training_groups_need_the_shared_engine_and_a_preset_without_compile():
    with pytest.raises(ConfigError, match="shared engine"):
        StudyConfig(group_trainings=2, engine="isolated")
    with pytest.raises(ConfigError, match="paper-group"):
        StudyConfig(group_trainings=2, preset="paper-fast")
    assert StudyConfig(group_trainings=2, preset="paper-group").group_trainings == 2


@pytest.mark.parametrize(("options", "refused"), [
    ({"executor": "ray", "jobs": 2}, "--jobs applies to --executor local only"),
    ({"executor": "ray", "group_trainings": 2}, "--group-trainings applies to --executor local only"),
    ({"cpus_per_step": 2}, "--cpus-per-step applies to --executor ray only"),
    ({"gpus_per_training": 0.5}, "--gpus-per-training applies to --executor ray only"),
    ({"ray_address": "127.0.0.1:6379"}, "--ray-address applies to --executor ray only")])
def test_an_option_the_executor_cannot_honour_is_refused(options, refused):
    with pytest.raises(ConfigError, match=refused):
        StudyConfig(**options)


def test_each_executor_takes_its_own_options_and_runs_either_engine():
    assert StudyConfig(executor="ray", engine="isolated", cpus_per_step=4, group_trainings=1).cpus_per_step == 4
    assert StudyConfig(jobs=2, group_trainings=2, preset="paper-group").jobs == 2


def test_a_ray_step_asks_for_what_the_clusters_nodes_have_not_the_submitting_machines_cores():
    from imbadv.study import local_executor, ray_executor

    one_cpu_nodes = [{"CPU": 1.0}, {"CPU": 1.0}]
    default = StudyConfig(executor="ray")
    ray_executor.check_resources(default, one_cpu_nodes)  # whatever this machine's cores
    assert ray_executor.threads(default) == 1
    assert local_executor.threads(StudyConfig(jobs=1)) == (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match=r"asks for 2 CPUs .* the largest Ray node has 1: pass --cpus-per-step 1"):
        ray_executor.check_resources(StudyConfig(executor="ray", cpus_per_step=2), one_cpu_nodes)
    with pytest.raises(ConfigError, match="no Ray node has one"):
        ray_executor.check_resources(StudyConfig(executor="ray", gpus_per_training=0.25), one_cpu_nodes)
    ray_executor.check_resources(StudyConfig(executor="ray", gpus_per_training=0.25), [{"CPU": 4.0, "GPU": 1.0}])


def test_every_executor_in_the_table_has_the_interface_the_engine_calls():
    from imbadv.study.engine import EXECUTORS
    from imbadv.study.config import Executor

    assert set(EXECUTORS) == set(typing.get_args(Executor))
    for executor in EXECUTORS.values():
        assert all(callable(getattr(executor, name)) for name in ("prepare", "threads", "drive"))


def test_each_attack_adds_the_grids_evaluations_on_the_same_trainings():
    steps = plan(StudyConfig(preset="smoke", attacks="fgsm,pgd,autoattack"), 10, "d", COMMIT)
    evaluations = [dict(s.options) for s in steps if s.entry == "evaluate"]
    assert sum(s.entry == "train" for s in steps) == 21
    assert Counter(e["attack"] for e in evaluations) == {"fgsm": 41, "pgd": 41, "autoattack": 21}
    assert {e["source"] for e in evaluations if e["attack"] == "autoattack"} == {"self"}  # white-box only
    # FGSM attacks the whole test set; a stronger attack on a class's model only that class's images
    assert all("attack_classes" not in e for e in evaluations if e["attack"] == "fgsm")
    assert all(e["attack_classes"] == str(e["class_id"]) for e in evaluations
               if e["attack"] != "fgsm" and e["class_id"] is not None)
    pgd = next(e for e in evaluations if e["attack"] == "pgd")
    assert (pgd["steps"], pgd["restarts"], pgd["attack_seed"]) == (20, 1, 0) and "decay" not in pgd
    paper = plan(StudyConfig(preset="smoke"), 10, "d", COMMIT)
    assert {s.key for s in steps if dict(s.options).get("attack") == "fgsm"} == \
        {s.key for s in paper if s.entry == "evaluate"}  # adding attacks keeps FGSM's steps and their reuse


def test_the_attacks_options_reach_their_evaluations_and_are_checked():
    config = StudyConfig(preset="smoke", classes="3", attacks="mifgsm,autoattack", steps=5, decay=0.5,
                         aa_version="fast", images_per_class=100)
    evaluations = [dict(s.options) for s in plan(config, 10, "d", COMMIT) if s.entry == "evaluate"]
    assert {e["images_per_class"] for e in evaluations} == {100}
    mifgsm = next(e for e in evaluations if e["attack"] == "mifgsm")
    assert (mifgsm["steps"], mifgsm["decay"]) == (5, 0.5) and "restarts" not in mifgsm
    assert {e["aa_version"] for e in evaluations if e["attack"] == "autoattack"} == {"fast"}
    with pytest.raises(ConfigError, match="not a comma-separated list of fgsm"):
        StudyConfig(attacks="fgsm,cw")
    with pytest.raises(ConfigError, match="images per class -1"):
        StudyConfig(images_per_class=-1)
