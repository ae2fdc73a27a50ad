"""A sweep whose driver is SIGKILLed finishes with `mm4ke-ray sweep --resume FOLDER`.

Both runs are real `mm4ke-ray` processes with their own local Ray. The first is killed while
its second trial runs, its folder is moved to another path, and the resumed one must end with the requested number of trials, run no
finished trial again (finished: in the experiment state Tune stored), and log into the same MLflow
parent run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from fault_helpers import cli_env, sweep_dict, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))


def _reports(trial_dir: Path) -> list[dict]:
    """Every result Tune recorded for a trial (its result.json has one JSON object per line)."""
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _saved_results(folder: Path) -> dict[str, dict]:
    """Trial id → last result, as Tune's newest stored experiment state holds them."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return {}
    trials = {}
    for trial_json, meta_json in json.loads(states[-1].read_text())["trial_data"]:
        trials[json.loads(trial_json)["trial_id"]] = json.loads(meta_json).get("last_result") or {}
    return trials


def _kill_leftovers(marker: str) -> None:
    """SIGKILL processes of the killed run's Ray (fate-shared with the driver; this is a safety net)."""
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                os.kill(p.info["pid"], signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            pass


def test_sigkilled_driver_resumes_into_the_same_run(tmp_path, tiny_model_dir):
    from mlflow import MlflowClient

    config = sweep_dict(tmp_path, tiny_model_dir, "resumetest", trials=3, extra=1)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    folder = tmp_path / "ray" / "resumetest"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = cli_env(Path(ray_tmp))
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen([CLI, "sweep", str(tmp_path / "sweep.yaml")], stdout=log, stderr=subprocess.STDOUT,
                             env=env, cwd=tmp_path)
    try:
        def second_trial_running():
            if first.poll() is not None:
                raise AssertionError(f"the first run ended by itself: {(tmp_path / 'first.log').read_text()[-3000:]}")
            done = list(folder.glob("sweep_trial_*/checkpoint_*/result.json"))
            return len(done) >= 1 and len(list(folder.glob("sweep_trial_*"))) >= 2

        wait_for(second_trial_running, 300, 0.1, "the first trial to finish and the second to start")
        # A local sweep opens no web UI: Ray's dashboard process (kept for its internal modules)
        # serves no frontend and listens on the loopback interface only.
        started = [" ".join(p.cmdline()) for p in psutil.Process(first.pid).children(recursive=True)]
        dashboards = [c for c in started if "dashboard/dashboard.py" in c]
        assert started and all("--host=127.0.0.1" in c and "--disable-frontend" in c for c in dashboards)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
        time.sleep(2)
        _kill_leftovers(ray_tmp)
    manifest = json.loads((folder / "mm4ke-sweep.json").read_text())
    # Finished before the kill = its result is in the experiment state Tune stored. A trial that
    # stored its checkpoint in the moment before the kill, before the driver saved that state, is
    # unknown to the resumed Tune: it runs again under a new id (README "What survives what").
    saved = _saved_results(folder)
    finished_before = {t for t, last in saved.items() if "status" in last}
    assert finished_before
    unsaved = {d.name.split("_")[2] for d in folder.glob("sweep_trial_*")} - set(saved)

    # The killed sweep's folder is moved (another disk, another name) before it is resumed: every
    # path inside it (Tune's state, the study's journal, the spool) is re-derived from where it is.
    old_folder, folder = folder, tmp_path / "moved" / "elsewhere"
    folder.parent.mkdir()
    shutil.move(old_folder, folder)
    resumed = subprocess.run([CLI, "sweep", "--resume", str(folder)], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=600)
    _kill_leftovers(ray_tmp)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming sweep resumetest" in resumed.stderr
    assert "--host 127.0.0.1" in resumed.stderr.replace("\n", " ")  # the printed `mlflow ui` binds loopback
    assert not old_folder.exists()  # nothing was written where the folder used to be

    # The same parent run, finished, with the requested number of trials, each logged once.
    client = MlflowClient(config["tracking"]["uri"])
    exp = client.get_experiment_by_name("resumetest")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("mm4ke.role") == "sweep"]
    assert [p.info.run_id for p in parents] == [manifest["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mm4ke.sweep_run_id") == manifest["parent_run_id"]
                and r.data.tags.get("mm4ke.role") == "candidate"]
    assert all(r.data.tags.get("mm4ke.status") == "ok" for r in children), \
        [(r.info.run_name, r.data.tags) for r in children if r.data.tags.get("mm4ke.status") != "ok"]
    assert [r.data.tags.get("mm4ke.kind") for r in children].count("base") == 1
    cands = [r for r in children if r.data.tags.get("mm4ke.kind") != "base"]
    names = [r.data.tags["mm4ke.candidate"] for r in cands]
    assert len(names) == len(set(names)) == 3 * 2
    trials = {r.data.tags["mm4ke.trial_id"] for r in cands}
    assert len(trials) == 3
    # One trial run per trial, the resumed driver's candidates under the run its first driver made.
    trial_runs = [r for r in runs if r.data.tags.get("mm4ke.role") == "trial"
                  and r.data.tags.get("mm4ke.status") != "orphaned"]
    assert sorted(r.data.tags["mm4ke.trial_id"] for r in trial_runs) == sorted(trials)
    by_trial = {r.data.tags["mm4ke.trial_id"]: r.info.run_id for r in trial_runs}
    assert all(r.data.tags["mlflow.parentRunId"] == by_trial[r.data.tags["mm4ke.trial_id"]] for r in cands)
    assert len(client.list_artifacts(manifest["parent_run_id"], "deltas")) == 3

    # No finished trial ran again: every trial trained and evaluated exactly once; the ones
    # finished before the kill at most re-reported their checkpointed result.
    assert finished_before <= trials
    assert not unsaved & trials  # a trial the stored state missed left no run and no delta behind
    for trial_dir in folder.glob("sweep_trial_*"):
        fresh = [r for r in _reports(trial_dir) if not r.get("restored")]
        if trial_dir.name.split("_")[2] in trials:
            assert len(fresh) == 1, trial_dir.name

    # The Optuna study (journal in the sweep folder) holds every told point, none left running.
    import optuna

    from mm4ke_ray.search.searcher import EXTRA_ATTR, STUDY_FILE, journal_storage

    study = optuna.load_study(study_name="resumetest", storage=journal_storage(folder / STUDY_FILE))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len([t for t in complete if EXTRA_ATTR not in t.user_attrs]) == 3
    assert len([t for t in complete if EXTRA_ATTR in t.user_attrs]) == 3
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
