"""benchmarks/long_study.sh: a long study's frozen code, store, artifacts, cache and report in its own folder."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "long_study.sh"


def test_a_long_study_keeps_all_it_writes_in_its_folder_and_reports(gtsrb_small, tmp_path):
    caller = tmp_path / "caller"  # where the script is called from, as a user's shell would be
    caller.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IMBADV_CACHE"))}
    result = subprocess.run(["bash", str(SCRIPT), "gtsrb", "--preset", "smoke", "--dir", str(tmp_path / "long"),
                             "--data", str(gtsrb_small)], cwd=caller, env=env, capture_output=True, text=True,
                            timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    work = tmp_path / "long" / "gtsrb"
    assert list(caller.iterdir()) == []
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert (work / "COMMIT").read_text().strip() == head.stdout.strip()
    assert (work / "src" / "imbadv" / "__init__.py").is_file() and (work / "cache").is_dir()
    with sqlite3.connect(work / "mlflow.db") as store:
        locations = [row[0] for row in store.execute("select artifact_location from experiments")]
        finished = store.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]
    assert locations and all(location.startswith(str(work / "mlruns")) for location in locations)
    assert finished > 12  # the parent study, 12 trainings (4 losses x 3 seeds) and their evaluations
    assert "ce+posthoc1" in (work / "report-gtsrb" / "gtsrb32-small-smoke-natural" / "report.md").read_text()
    assert "long_study.sh: gtsrb done" in result.stdout
