"""Faults a sweep survives, on a real local Ray (2 CPUs), real Tune/Optuna/MLflow (SQLite).

Each fault is injected from here: a process is found by its Ray process title (`ray::Class.method`
while a method runs) among this test's descendants and SIGKILLed. Also: a diverging trial, and
no secret from the environment in MLflow.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest
from fault_helpers import Killer, child_runs, pareto_candidates, sweep_dict, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker_tmp(tmp_path_factory):
    """The TMPDIR of this module's Ray workers: where an R-SFT worker makes its delta folder."""
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="module")
def ray_2_cpus(worker_tmp):
    import tempfile

    import ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(worker_tmp)  # inherited by Ray's workers
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
        yield
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before


def ray_processes(title: str) -> list[psutil.Process]:
    """This test's descendant processes whose Ray title starts with `ray::<title>`."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmd and cmd[0].startswith(f"ray::{title}"):
            out.append(p)
    return out


def first_pid(title: str):
    def find():
        procs = ray_processes(title)
        return procs[0].pid if procs else None

    return find


def _config(tmp_path, tiny_model_dir, name, **kw):
    from mm4ke_ray.config import validate_config

    return validate_config(sweep_dict(tmp_path, tiny_model_dir, name, **kw), "test")


def _by_status(runs) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags.get("mm4ke.status", "?"), []).append(r)
    return out


def test_killed_rsft_worker_is_retried_and_others_are_undisturbed(ray_2_cpus, worker_tmp, tiny_model_dir, tmp_path):
    from mm4ke_ray.search.driver import run_sweep

    config = _config(tmp_path, tiny_model_dir, "workerkill", trials=2, runner="train", extra=1)
    assert config.max_failures == 2  # the default the retry relies on
    started = time.time()

    def training_worker():
        # Mid-trial = inside the training function: its first act is making its delta folder.
        # (A worker killed while Ray Train is still starting the group is restarted by Ray Train.)
        training = [p for p in worker_tmp.glob("mm4ke-delta-*") if p.stat().st_mtime >= started]
        workers = ray_processes("RayTrainWorker")
        return workers[0].pid if training and workers else None

    killer = Killer(training_worker, timeout=240)
    killer.start()
    out = run_sweep(config)
    killer.join(10)
    assert killer.error is None and killer.killed, killer.error

    runs = child_runs(config.tracking.uri, out.parent_run_id)
    status = _by_status(runs)
    # The failed attempt: its own FAILED child run, with the reason.
    assert len(status["failed"]) == 1, {k: len(v) for k, v in status.items()}
    failed = status["failed"][0]
    killed_trial = failed.data.tags["mm4ke.trial_id"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mm4ke.attempt"] == "1" and failed.data.tags["mm4ke.retried"] == "true"
    reason = failed.data.tags["mm4ke.reason"]
    assert "WorkerGroupError" in reason and "died" in reason and "error.txt" in reason, reason
    assert "error" not in status and "diverged" not in status
    # The retry completed: both trials' candidates, each logged exactly once.
    cands = [r for r in status["ok"] if r.data.tags.get("mm4ke.kind") != "base"]
    names = [r.info.run_name for r in cands]
    assert len(names) == len(set(names)) == 2 * 2 == len(out.rows)
    trials = {r.data.tags["mm4ke.trial_id"] for r in cands}
    assert len(trials) == 2 and killed_trial in trials
    assert all(r.info.status == "FINISHED" for r in cands)
    # No other trial disturbed: only the killed trial has an error file in Tune's folder.
    errors = sorted(p.parent.name for p in Path(out.experiment_dir).glob("*/error.txt"))
    assert len(errors) == 1 and killed_trial in errors[0], errors


def test_killed_merge_eval_actor_reruns_in_flight_candidates_once(ray_2_cpus, tiny_model_dir, tmp_path):
    from mm4ke_ray.search.driver import run_sweep

    config = _config(tmp_path, tiny_model_dir, "actorkill", trials=2, extra=3, limit=6, general=True)
    # Kill the actor while it is evaluating a candidate (its title then names the method); the
    # trial has queued its other candidates on the same actor, so they are in flight too.
    killer = Killer(first_pid("MergeEvalActor.evaluate"), timeout=240)
    restarted: list[int] = []

    def watch_restart():
        killer.join()
        if killer.killed:
            pid = wait_for(lambda: [p.pid for p in ray_processes("MergeEvalActor") if p.pid != killer.killed],
                           120, 0.1, "the restarted actor")
            restarted.extend(pid)

    killer.start()
    watcher = threading.Thread(target=watch_restart, daemon=True)
    watcher.start()
    out = run_sweep(config)
    watcher.join(30)
    assert killer.error is None and killer.killed, killer.error
    assert restarted and killer.killed not in restarted  # Ray restarted it as a new process

    names = [r["candidate"] for r in out.rows]
    assert len(names) == len(set(names)) == 2 * 4  # none lost, none doubled
    runs = child_runs(config.tracking.uri, out.parent_run_id)
    status = _by_status(runs)
    assert set(status) == {"ok"}  # an actor death is not a trial failure
    logged = sorted(r.info.run_name for r in status["ok"] if r.data.tags.get("mm4ke.kind") != "base")
    assert logged == sorted(names)
    table = pareto_candidates(config.tracking.uri, out.parent_run_id, tmp_path)
    assert sorted(table) == sorted(["base", *names])  # each candidate exactly once in the Pareto table


SECRETS = {"HF_TOKEN": "hf_TESTSECRETtoken1234567890", "AWS_SECRET_ACCESS_KEY": "AKIAtestSECRETkey/abcdefgh12345",
           "MLFLOW_TRACKING_PASSWORD": "pw-TESTSECRET-987654"}


@pytest.fixture
def secret_env():
    before = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    yield SECRETS
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_diverging_trial_is_recorded_and_the_sweep_goes_on(ray_2_cpus, tiny_model_dir, tmp_path, secret_env):
    import optuna
    from mlflow import MlflowClient

    from mm4ke_ray.search.driver import run_sweep
    from mm4ke_ray.search.searcher import STUDY_FILE, journal_storage

    # SGD at lr 1e20 turns the loss into NaN within two steps; 5e-4 trains normally. Seed 3 draws
    # both within three trials (and draws them the same way every run: the sampler is seeded).
    config = _config(tmp_path, tiny_model_dir, "diverge", trials=3, extra=1, optimizer="sgd",
                     space={"lr": {"choices": [1e20, 5e-4]}})
    start = time.time()
    out = run_sweep(config)

    runs = child_runs(config.tracking.uri, out.parent_run_id)
    status = _by_status(runs)
    assert "diverged" in status and "ok" in status, {k: len(v) for k, v in status.items()}
    diverged = status["diverged"]
    for run in diverged:
        assert run.info.status == "FAILED" and run.info.run_name.endswith("-diverged")
        reason = run.data.tags["mm4ke.reason"]
        assert "diverged" in reason and "lower lr" in reason, reason
        assert float(run.data.params["lr"]) == 1e20
    good = {r.data.tags["mm4ke.trial_id"] for r in status["ok"] if r.data.tags.get("mm4ke.kind") != "base"}
    bad = {r.data.tags["mm4ke.trial_id"] for r in diverged}
    assert good and not good & bad and len(good | bad) == 3  # the sweep went on past the diverged trial
    assert len(out.rows) == 2 * len(good)

    # Optuna got it as a failure, not as a point.
    study = optuna.load_study(study_name="diverge", storage=journal_storage(Path(out.experiment_dir) / STUDY_FILE))
    fails = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(fails) == len(bad) and all(t.params["lr"] == 1e20 for t in fails)
    assert all(t.user_attrs["mm4ke.status"] == "diverged" for t in fails)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
    assert all(t.params["lr"] == 5e-4 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)

    # No secret from the environment in any param, tag or the logged config.
    client = MlflowClient(config.tracking.uri)
    exp = client.get_experiment_by_name("diverge")
    everything = client.search_runs([exp.experiment_id], max_results=5000)
    assert len(everything) == len(runs) + 1 and time.time() - start < 600
    texts = [client.download_artifacts(out.parent_run_id, "config.yaml", str(tmp_path))]
    blob = "\n".join(
        [f"{k}={v}" for r in everything for k, v in {**r.data.params, **r.data.tags}.items()]
        + [Path(t).read_text() for t in texts]
    )
    for name, value in secret_env.items():
        assert value not in blob, name
