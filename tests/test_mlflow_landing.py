"""The sweep's experiment as a person opens it: the printed `mlflow ui` command, started from
another directory, then the experiment's plain link in headless Chromium (issue 26 §1).

MLflow 3.17 shows the GenAI Overview on `#/experiments/ID` unless the browser chose the
model-training view; the printed command serves MLflow through this package's app, whose page
makes "machine learning" the browser's default choice (tracking/mlflow_ui.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fault_helpers import free_port

from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.mlflow_ui import DEFAULT_WORKFLOW_SCRIPT, index_page
from mm4ke_ray.tracking.registry import log_export_model
from mm4ke_ray.tracking.ui_command import APP_NAME, absolute_store_uri, app_installed, ui_command

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
MLFLOW = Path(sys.executable).parent / "mlflow"


def test_index_page_sets_the_default_workflow_before_mlflows_script():
    page = index_page()
    assert page.index(DEFAULT_WORKFLOW_SCRIPT) < page.index("<script defer")
    assert "mlflow.workflowType_v1" in DEFAULT_WORKFLOW_SCRIPT and "===null" in DEFAULT_WORKFLOW_SCRIPT


def test_printed_command_names_the_store_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = ui_command("mlflow", "sqlite:///runs/mlflow.db")
    assert f"--backend-store-uri sqlite:///{tmp_path}/runs/mlflow.db " in cmd
    assert absolute_store_uri("http://host:5000") == "http://host:5000"
    assert ("--app-name mm4ke" in cmd) == app_installed()


def _entry_point_dir(tmp_path: Path) -> Path:
    """The package's `mlflow.app` entry point as an installed package declares it (pyproject.toml),
    for a checkout whose editable install predates it."""
    info = tmp_path / "ep" / "mm4ke_ui_entry-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mm4ke-ui-entry\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[mlflow.app]\n{APP_NAME} = mm4ke_ray.tracking.mlflow_ui:app\n")
    return info.parent


def _dom(url: str, profile: Path) -> str:
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--window-size=1600,1000", "--virtual-time-budget=20000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (.ci/run installs Debian's chromium when it can)")
def test_experiment_link_opens_on_the_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///runs/mlflow.db"
    tracker = SweepTracker(uri, "demo", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("demo-landing", params={"edits": 3}, tags={})
    run_id = tracker.log_candidate("t1-c0", {"alpha": 0.3}, {"combined_score": 0.8}, {"mm4ke.kind": "sampled"},
                                   run_name="α.30 s.10 t01c0")
    (tmp_path / "export").mkdir()
    recipe = {"source": {"candidate_run_id": run_id, "sweep_name": "demo", "sweep_run_id": parent, "candidate": "t1-c0"},
              "base_model": "base", "merge": {"alpha": 0.3, "sparsity": 0.1}, "edits": {"count": 3, "source": "demo"},
              "recorded_metrics": {"combined_score": 0.8}}
    log_export_model(uri, tmp_path / "export", recipe, upload=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), str(_entry_point_dir(tmp_path)), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    cmd = shlex.split(ui_command(str(MLFLOW), uri, port))
    if "--app-name" not in cmd:  # this process's install lacks the entry point; the subprocess has it
        cmd[2:2] = ["--app-name", APP_NAME]
    log = (tmp_path / "ui.log").open("w")
    server = subprocess.Popen(cmd, cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300  # ~15 s on an idle machine; minutes on a busy 2-core one
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
                time.sleep(1)
        dom = _dom(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}", tmp_path / "browser")
        run_page = _dom(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs/{run_id}",
                        tmp_path / "browser")
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    assert "<title>Runs - Experiment" in dom, dom[-3000:]
    assert "demo-landing" in dom  # the sweep's run is listed: the store was found from another directory
    assert "workflowType=genai" not in dom and "Detect Issues" not in dom
    # the exported model is listed on its candidate's run page ("Logged models", not "—")
    assert "demo-t1-c0" in run_page, run_page[-3000:]
