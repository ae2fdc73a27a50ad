"""The sweep's experiment as a person opens it: the printed `mlflow ui` command, started from
another directory, then the experiment's plain link in headless Chromium (issue 26 §1).

MLflow 3.17 shows the GenAI Overview on `#/experiments/ID` unless the browser chose the
model-training view, and a runs table of Source, Models and Dataset with every nested run closed;
the printed command serves MLflow through this package's app, whose page makes "machine learning"
the browser's default choice and, for a sweep's experiment, the objectives its columns and the
newest sweep's rows open (tracking/mlflow_ui.py), where the browser has stored no choice.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import free_port, wait_for_health
from mlflow import MlflowClient

from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.mlflow_ui import (
    DEFAULT_WORKFLOW_SCRIPT,
    SWEEP_COLUMNS,
    WORKFLOW_KEY,
    defaults_script,
    index_page,
    sweep_view,
    view_state_key,
)
from mm4ke_ray.tracking.registry import log_export_model
from mm4ke_ray.tracking.run_records import trial_run
from mm4ke_ray.tracking.ui_command import APP_NAME, absolute_store_uri, app_installed, ui_command

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
MLFLOW = Path(sys.executable).parent / "mlflow"


def test_index_page_sets_the_default_workflow_before_mlflows_script():
    page = index_page()
    assert page.index(DEFAULT_WORKFLOW_SCRIPT) < page.index("<script defer")
    assert "mlflow.workflowType_v1" in DEFAULT_WORKFLOW_SCRIPT and "===null" in DEFAULT_WORKFLOW_SCRIPT


def _sweep(tracker: SweepTracker, name: str, trials: int) -> tuple[str, list[str]]:
    """A sweep's parent run with `trials` trial runs of one candidate each: (parent, trial run ids)."""
    parent = tracker.start_sweep(name, params={}, tags={})
    for t in range(trials):
        tracker.log_candidate(f"t{t}-c0", {"alpha": 0.3, "sparsity": 0.1},
                              {"edit_score": 0.7, "general_score": 0.9, "combined_score": 0.8}, {},
                              trial=trial_run(f"t{t}", f"t{t:02d}", {"layer": 1, "lr": 1e-3}))
    tracker.finish()
    return parent, [tracker.trial_runs[f"t{t}"] for t in range(trials)]


def test_sweep_view_names_the_objectives_and_opens_the_newest_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    older, older_trials = _sweep(SweepTracker(uri, "demo", str(tmp_path / "a")), "first", 1)
    time.sleep(0.01)  # start times are in ms: the second sweep is the newer one
    tracker = SweepTracker(uri, "demo", str(tmp_path / "a"))
    newest, trials = _sweep(tracker, "second", 2)
    client = MlflowClient(uri)
    plain = client.create_experiment("no-sweep", artifact_location=str(tmp_path / "b"))
    client.create_run(plain)
    views = sweep_view(client)
    assert set(views) == {tracker.experiment_id}  # MLflow's own defaults elsewhere
    view = views[tracker.experiment_id]
    assert {"metrics.`edit_score`", "metrics.`general_score`", "metrics.`combined_score`", "params.`alpha`",
            "params.`sparsity`"} <= set(view["selectedColumns"]) and view["selectedColumns"] == list(SWEEP_COLUMNS)
    assert view["runsExpanded"] == dict.fromkeys([newest, *trials], True)  # the older sweep stays closed
    assert older not in view["runsExpanded"] and older_trials[0] not in view["runsExpanded"]
    assert view_state_key("7") == 'MLflowLocalStorage-1.1-ExperimentPage-["7"]-ReactComponentState'


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (.ci/run installs Debian's chromium when it can)")
def test_the_page_script_writes_only_where_the_browser_stored_nothing(tmp_path):
    """The defaults script in Chromium, on a page whose storage already holds a person's columns
    for experiment 1 and nothing for experiment 2 nor the workflow toggle."""
    mine = '{"selectedColumns":["attributes.`Source`"]}'
    ours = {"1": {"selectedColumns": ["metrics.`edit_score`"]}, "2": {"selectedColumns": ["metrics.`edit_score`"]}}
    keys = [view_state_key("1"), view_state_key("2"), WORKFLOW_KEY]
    page = tmp_path / "page.html"
    page.write_text(
        f"<html><head><script>localStorage.clear();localStorage.setItem({view_state_key('1')!r},{mine!r})</script>"
        f"{defaults_script(ours)}</head><body><pre id=out></pre><script>document.getElementById('out').textContent="
        f"JSON.stringify({keys!r}.map(function(k){{return localStorage.getItem(k)}}))</script></body></html>")
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'b'}",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored = json.loads(html.unescape(re.search(r"<pre id=\"out\">(.*)</pre>", proc.stdout)[1]))
    assert stored == [mine, '{"selectedColumns":["metrics.`edit_score`"]}', '"machine_learning"']


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


def _dom(url: str, profile: Path, rendered: str = "</html>") -> str:
    """The page as Chromium renders it. On a loaded machine MLflow's scripts may not finish within
    the virtual time budget (the page then lacks `rendered`): asked again, once, with a longer one."""
    for budget in (20000, 60000):
        proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                               "--window-size=1600,1000", f"--virtual-time-budget={budget}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if rendered in proc.stdout:
            break
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (.ci/run installs Debian's chromium when it can)")
def test_experiment_link_opens_on_the_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///runs/mlflow.db"
    tracker = SweepTracker(uri, "demo", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("demo-landing", params={"edits": 3}, tags={})
    run_id = tracker.log_candidate("t1-c0", {"alpha": 0.3, "sparsity": 0.1},
                                   {"edit_score": 0.7, "general_score": 0.9, "combined_score": 0.8},
                                   {"mm4ke.kind": "sampled"}, run_name="α.30 s.10 t01c0")
    (tmp_path / "export").mkdir()
    recipe = {"source": {"candidate_run_id": run_id, "sweep_name": "demo", "sweep_run_id": parent, "candidate": "t1-c0"},
              "base_model": "base", "merge": {"alpha": 0.3, "sparsity": 0.1}, "edits": {"count": 3, "source": "demo"},
              "recorded_metrics": {"combined_score": 0.8}}
    log_export_model(uri, tmp_path / "export", recipe, upload=False)
    log_export_model(uri, tmp_path / "export", recipe, upload=False)  # exported again: a model named apart
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
        wait_for_health(server, port, tmp_path / "ui.log")
        dom = _dom(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}", tmp_path / "browser",
                   rendered="<title>Runs - Experiment")
        run_page = _dom(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs/{run_id}",
                        tmp_path / "browser")
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    assert "<title>Runs - Experiment" in dom, (re.findall(r"<title>.*?</title>", dom), dom[-3000:])
    assert "demo-landing" in dom  # the sweep's run is listed: the store was found from another directory
    assert "workflowType=genai" not in dom and "Detect Issues" not in dom
    # without a click: the objectives, α and sparsity are columns, and the sweep's run is open
    headers = set(re.findall(r'role="columnheader"[^>]* col-id="(\w+\.`[^`"]+`)"', dom))
    assert {"metrics.`edit_score`", "metrics.`general_score`", "metrics.`combined_score`", "params.`alpha`",
            "params.`sparsity`"} <= headers, sorted(headers)
    # ... and they show without scrolling sideways: at 1600 px with MLflow's assistant panel open
    # (its default) the grid's scrolling part shows about 525 px beside the pinned name and date
    # (measured on screenshots); the browser's layout puts each column at its `left` offset there.
    for name in ("combined_score", "edit_score", "general_score"):
        cell = re.search(rf'col-id="metrics\.`{name}`"[^>]*style="left: (\d+)px; width: (\d+)px;"', dom)
        assert cell and int(cell[1]) + int(cell[2]) <= 525, (name, cell and cell.groups())
    assert 'col-id="attributes.`Models`"' not in dom  # an export shows on its run's page (below)
    assert "t01c0" in dom  # the candidate's row, under its sweep's run
    # the exported model is listed on its candidate's run page ("Logged models", not "—")
    assert re.search(r"demo-t1-c0(?!-export)", run_page), run_page[-3000:]
    assert "demo-t1-c0-export2" in run_page, run_page[-3000:]  # the second export, told apart by its name
