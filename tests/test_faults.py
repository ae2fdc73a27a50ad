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
from fault_helpers import Killer, child_runs, pareto_candidates, sweep_dict, trial_runs, wait_for

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
    # WorkerGroupError when the worker dies while training; ControllerError when it dies before
    # Ray Train saw its training function start (the case that left a placement group behind and
    # made the retry wait forever before train_placement.py).
    assert ("WorkerGroupError" in reason or "ControllerError" in reason), reason
    assert "died" in reason and "error.txt" in reason, reason
    assert "error" not in status and "diverged" not in status
    # The retry completed: both trials' candidates, each logged exactly once.
    cands = [r for r in status["ok"] if r.data.tags.get("mm4ke.kind") != "base"]
    names = [r.data.tags["mm4ke.candidate"] for r in cands]
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
    logged = sorted(r.data.tags["mm4ke.candidate"] for r in status["ok"] if r.data.tags.get("mm4ke.kind") != "base")
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
        assert run.info.status == "FAILED" and run.info.run_name.endswith(" diverged")
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
    # The parent, one R-SFT trial run per trial (the diverged one too), and their candidate runs.
    trials = trial_runs(config.tracking.uri, out.parent_run_id)
    assert len(trials) == 3 and {t.data.tags["mm4ke.trial_id"] for t in trials} == good | bad
    assert len(everything) == 1 + len(trials) + len(runs) and time.time() - start < 600
    texts = [client.download_artifacts(out.parent_run_id, "config.yaml", str(tmp_path))]
    blob = "\n".join(
        [f"{k}={v}" for r in everything for k, v in {**r.data.params, **r.data.tags}.items()]
        + [Path(t).read_text() for t in texts]
    )
    for name, value in secret_env.items():
        assert value not in blob, name


# -- the tracking server away ---------------------------------------------------------------------


def _http_config(tmp_path, tiny_model_dir, name, port, **kw):
    from mm4ke_ray.config import validate_config

    data = sweep_dict(tmp_path, tiny_model_dir, name, tracking_uri=f"http://127.0.0.1:{port}", **kw)
    del data["tracking"]["artifact_location"]  # artifacts go through the server too
    return validate_config(data, "test")


def _assert_all_logged(out, uri: str, trials: int, tmp_path) -> None:
    """Every candidate the sweep computed is in MLflow with every metric, and the sweep's own records."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = {r.data.tags["mm4ke.candidate"]: r for r in child_runs(uri, out.parent_run_id)}
    assert len(out.rows) == trials * 2
    for row in out.rows:
        run = runs[row["candidate"]]
        assert run.info.status == "FINISHED"
        for key, value in row.items():
            # Search parameters (α, τ, lr, warmup_ratio, ...) are the run's params; the rest its metrics.
            if isinstance(value, float) and key not in run.data.params and key != "density" and value == value:
                assert run.data.metrics[key.replace("/", ".")] == pytest.approx(value, rel=1e-12), key
    history = client.get_metric_history(out.parent_run_id, "trials_done")
    assert sorted(m.value for m in history) == [float(i) for i in range(1, trials + 1)]
    assert len(client.list_artifacts(out.parent_run_id, "deltas")) == trials
    table = pareto_candidates(uri, out.parent_run_id, tmp_path)
    assert sorted(table) == sorted(["base", *(r["candidate"] for r in out.rows)])
    assert client.get_run(out.parent_run_id).info.status == "FINISHED"


def test_mlflow_away_for_30_s_loses_no_record(ray_2_cpus, tiny_model_dir, tmp_path):
    from fault_helpers import free_port, start_mlflow_server, stop_process_group

    from mm4ke_ray.search.driver import run_sweep

    port, server_dir = free_port(), tmp_path / "server"
    servers = [start_mlflow_server(server_dir, port)]
    config = _http_config(tmp_path, tiny_model_dir, "outage", port, trials=4, extra=1, general=True)
    times = {}

    def outage():
        # Down once the sweep runs its first trial (the parent and base runs are logged), for 30 s.
        wait_for(lambda: list((tmp_path / "ray" / "outage").glob("sweep_trial_*")), 300, 0.1, "the first trial")
        stop_process_group(servers[0])
        times["down"] = time.time()
        time.sleep(30)
        servers.append(start_mlflow_server(server_dir, port))  # same port, same backend store
        times["up"] = time.time()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        out = run_sweep(config)
        thread.join(120)
        assert "up" in times
        assert out.mlflow_spooled > 0  # writes were made while it was away...
        assert out.spool is None and not (Path(out.experiment_dir) / "mlflow-spool.jsonl").exists()
        _assert_all_logged(out, config.tracking.uri, 4, tmp_path)  # ...and none is missing
    finally:
        for server in servers:
            stop_process_group(server)


def test_mlflow_away_until_the_end_leaves_a_spool_to_replay(ray_2_cpus, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from fault_helpers import free_port, start_mlflow_server, stop_process_group

    from mm4ke_ray.cli import main
    from mm4ke_ray.search import driver

    monkeypatch.setattr(driver, "FINAL_FLUSH_WAIT_S", 2.0)  # the test need not wait a minute for it
    port, server_dir = free_port(), tmp_path / "server"
    servers = [start_mlflow_server(server_dir, port)]
    config = _http_config(tmp_path, tiny_model_dir, "away", port, trials=2, extra=1)

    def outage():
        wait_for(lambda: list((tmp_path / "ray" / "away").glob("sweep_trial_*")), 300, 0.1, "the first trial")
        stop_process_group(servers[0])

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        out = driver.run_sweep(config)  # completes although MLflow never comes back
        thread.join(10)
        err = capsys.readouterr().err.replace("\n", "")
        assert out.spool and Path(out.spool).is_file()
        assert out.spool in err and "--replay-spool" in err

        servers.append(start_mlflow_server(server_dir, port))
        assert main(["sweep", "--replay-spool", out.spool]) == 0
        assert "0 still waiting" in capsys.readouterr().out
        assert not Path(out.spool).exists()
        _assert_all_logged(out, config.tracking.uri, 2, tmp_path)
    finally:
        for server in servers:
            stop_process_group(server)


def test_mlflow_away_as_the_front_is_published_gets_it_when_back(ray_2_cpus, tiny_model_dir, tmp_path, monkeypatch):
    # The server stops the moment the sweep publishes its final Pareto front (every other record
    # already sent) and answers again some 15 s + its start later, within the final wait: the
    # front is published then, nothing is left in a spool.
    from fault_helpers import free_port, start_mlflow_server, stop_process_group

    from mm4ke_ray.search import driver
    from mm4ke_ray.tracking.pareto_artifacts import ParetoPublisher

    monkeypatch.setattr(driver, "FINAL_FLUSH_WAIT_S", 240.0)  # a busy machine's server start is slow
    port, server_dir = free_port(), tmp_path / "server"
    servers = [start_mlflow_server(server_dir, port)]
    config = _http_config(tmp_path, tiny_model_dir, "late", port, trials=2, extra=1)
    times, final = {}, ParetoPublisher.final

    def restart():
        time.sleep(15)
        servers.append(start_mlflow_server(server_dir, port))  # same port, same backend store
        times["up"] = time.time()

    def final_with_outage(self, *args, **kwargs):
        if "down" not in times:
            stop_process_group(servers[0])
            times["down"] = time.time()
            threading.Thread(target=restart, daemon=True).start()
        return final(self, *args, **kwargs)

    monkeypatch.setattr(ParetoPublisher, "final", final_with_outage)
    try:
        out = driver.run_sweep(config)
        assert "down" in times and "up" in times
        assert out.spool is None and not (Path(out.experiment_dir) / "mlflow-spool.jsonl").exists()
        _assert_all_logged(out, config.tracking.uri, 2, tmp_path)  # pareto/all.csv included
    finally:
        for server in servers:
            stop_process_group(server)


def test_a_final_publish_left_in_the_spool_is_made_by_the_replay(tmp_path, monkeypatch):
    # No Ray: a tracker with a spool, the server gone at the final publish and not back within
    # the wait. The publish becomes a spool record; --replay-spool makes it from MLflow's records.
    from fault_helpers import free_port, pareto_candidates, start_mlflow_server, stop_process_group
    from mlflow import MlflowClient

    from mm4ke_ray.tracking.buffer import Spool
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker, replay
    from mm4ke_ray.tracking.pareto_artifacts import ParetoPublisher

    for name, value in (("MAX_RETRIES", "1"), ("BACKOFF_FACTOR", "1"), ("TIMEOUT", "20")):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", value)  # as a sweep sets them: a dead server fails fast
    port, server_dir = free_port(), tmp_path / "server"
    uri = f"http://127.0.0.1:{port}"
    servers = [start_mlflow_server(server_dir, port)]
    try:
        tracker = SweepTracker(uri, "deferred", spool_path=tmp_path / "mlflow-spool.jsonl")
        tracker.start_sweep("deferred", {"model": "m"}, {})
        base = {"edit_score": 0.0, "general_score": 1.0, "combined_score": 0.5}
        tracker.log_candidate("base", {}, base, {"mm4ke.kind": "base"})
        metrics = {"edit_score": 0.6, "general_score": 0.9, "combined_score": 0.75}
        run_id = tracker.log_candidate("a", {"alpha": 0.1, "sparsity": 0.0}, metrics, {"mm4ke.kind": "sampled"})
        rows = [{"candidate": "a", "kind": "sampled", "alpha": 0.1, "sparsity": 0.0, "run_id": run_id, **metrics}]
        stop_process_group(servers[0])
        assert ParetoPublisher(tracker, base).final(rows, wait_s=1.0) is False
        tracker.finish("FINISHED")
        assert [r["op"] for r in Spool(tracker.spool.path, uri).records()] == ["pareto", "status"]

        servers.append(start_mlflow_server(server_dir, port))
        report = replay(tracker.spool.path)
        assert (report.sent, report.left, report.rejected, report.published) == (2, 0, 0, True)
        assert sorted(pareto_candidates(uri, tracker.parent_run_id, tmp_path)) == ["a", "base"]
        assert MlflowClient(uri).get_run(run_id).data.tags["pareto"] == "true"
    finally:
        for server in servers:
            stop_process_group(server)


def test_a_placement_group_left_behind_is_released(ray_2_cpus):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from mm4ke_ray.search.train_placement import (
        new_placement_key,
        record_placement_group,
        release_placement_group,
    )

    @ray.remote(num_cpus=1)
    def worker(key):  # stands where Ray Train's worker runs: inside the group, recording it
        record_placement_group(key)

    group = placement_group([{"CPU": 1}])
    ray.get(group.ready(), timeout=60)
    key = new_placement_key()
    ray.get(worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote(key), timeout=120)
    assert placement_group_table(group)["state"] == "CREATED"
    assert release_placement_group(key) == 1
    wait_for(lambda: placement_group_table(group)["state"] == "REMOVED", 30, 0.1, "the group removed")
    assert release_placement_group(key) == 0  # the key is spent: a second call removes nothing

    # A group already gone (Ray Train removed it on a clean finish) is left alone.
    other = placement_group([{"CPU": 1}])
    ray.get(other.ready(), timeout=60)
    key = new_placement_key()
    ray.get(worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(other)).remote(key), timeout=120)
    ray.util.remove_placement_group(other)
    wait_for(lambda: placement_group_table(other)["state"] == "REMOVED", 30, 0.1, "the group removed")
    assert release_placement_group(key) == 0
    assert release_placement_group(new_placement_key()) == 0  # nothing recorded


def test_a_worker_dying_as_training_starts_leaves_no_placement_group(ray_2_cpus, tmp_path):
    """Real Ray Train: the worker dies the moment its training function starts. Depending on
    whether Ray Train saw the function start, the run fails with WorkerGroupError (Ray Train
    removes the group) or ControllerError (it leaves the group behind: seen in CI, where the
    retried trial then waited forever). Either way, none may remain after the release."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.backend import BackendConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.util.placement_group import placement_group_table

    from mm4ke_ray.search.train_placement import (
        new_placement_key,
        record_placement_group,
        release_placement_group,
    )

    def live_groups():
        return [g for g, v in placement_group_table().items() if v["state"] != "REMOVED"]

    def die_as_training_starts(cfg):  # nested: Ray pickles it by value (workers cannot import tests/)
        record_placement_group(cfg["key"])
        os._exit(1)

    seen = set()
    for attempt in range(3):
        key = new_placement_key()
        trainer = DataParallelTrainer(
            die_as_training_starts, backend_config=BackendConfig(), train_loop_config={"key": key},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=str(tmp_path), name=f"die{attempt}",
                                 failure_config=FailureConfig(controller_failure_limit=1)))
        with pytest.raises(ray.train.TrainingFailedError) as failed:
            trainer.fit()
        seen.add(type(failed.value).__name__)
        release_placement_group(key)
        wait_for(lambda: not live_groups(), 30, 0.2, f"no placement group left ({seen})")
    # The CPU the worker held is free again.
    assert ray.get(ray.remote(num_cpus=1)(lambda: 1).remote(), timeout=60) == 1
