"""A sweep survives losing a worker node.

A two-node cluster on this machine (the nodes of test_cluster.py: `ray start --block` in their
own sessions, token auth): a head with no CPUs (the driver's node, as on a real cluster's head)
and worker node A with 2 CPUs, where the R-SFT worker and the merge-eval actor run. While A's
R-SFT trains and its actor is up, every process of node A (raylet, agents, workers) is SIGKILLed:
the node is lost. A replacement node B joins (what an autoscaler does). The sweep, a real
`mm4ke-ray sweep --address` process, must complete with every candidate exactly once in MLflow
and in pareto/all.csv, and no point told twice to the Optuna study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest
import yaml
from fault_helpers import child_runs, pareto_candidates, sweep_dict, wait_for
from test_cluster import _free_port, _ray_call, _ray_env, _start_node, ray_nodes  # noqa: F401 - a fixture

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))


def _titles(node) -> list[tuple[int, str]]:
    out = []
    for p in node.processes():
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if cmd:
            out.append((p.pid, cmd[0]))
    return out


def _lose_node(node) -> int:
    """SIGKILL every process of `node` at once, as when its machine goes away; how many."""
    procs = node.processes()
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


def _start_head_with_address(num_cpus: int):
    """A head node (as test_cluster's start_head) whose processes know their cluster's address.

    Ray Train's placement-group cleaner finds the cluster through RAY_ADDRESS or by looking for
    the host's one GCS; on a machine that runs other Ray instances too, only the former works.
    """
    env = _ray_env(loopback_only=False)
    gcs = f"{_ray_call(env, 'print(ray._private.services.get_node_ip_address())')}:{_free_port()}"
    env["RAY_ADDRESS"] = gcs
    args = ["--head", f"--port={gcs.rsplit(':', 1)[1]}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}", "--include-dashboard=true"]
    return _start_node(args, env, num_cpus, "h"), gcs


def test_lost_worker_node_loses_and_doubles_nothing(tmp_path, tiny_model_dir, ray_nodes):  # noqa: F811
    import optuna

    from mm4ke_ray.search.searcher import STUDY_FILE, journal_storage

    head, gcs = _start_head_with_address(num_cpus=0)
    ray_nodes.append(head)
    a_tmp = Path(tempfile.mkdtemp(prefix="nla", dir="/tmp"))  # node A's workers make their deltas here
    env = {**head.env, "OMP_NUM_THREADS": "1"}
    node_a = _start_node([f"--address={gcs}"], {**env, "TMPDIR": str(a_tmp)}, 2, "a")
    ray_nodes.append(node_a)

    config = sweep_dict(tmp_path, tiny_model_dir, "nodeloss", trials=2, extra=1, runner="train")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 - closed below
    driver = subprocess.Popen([CLI, "sweep", str(tmp_path / "sweep.yaml"), "--address", gcs],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    events: dict = {}

    def lose_a_mid_trial():
        try:
            def both_running():
                if driver.poll() is not None:
                    return True
                titles = [t for _, t in _titles(node_a)]
                training = list(a_tmp.glob("mm4ke-delta-*"))
                return (training and any(t.startswith("ray::RayTrainWorker") for t in titles)
                        and any(t.startswith("ray::MergeEvalActor") for t in titles))

            wait_for(both_running, 300, 0.1, "R-SFT training and the merge-eval actor on node A")
            if driver.poll() is None:
                events["titles"] = [t for _, t in _titles(node_a)]
                events["killed"] = _lose_node(node_a)
                ray_nodes.append(_start_node([f"--address={gcs}"], env, 2, "b"))
                events["replaced"] = True
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            events["error"] = exc

    thread = threading.Thread(target=lose_a_mid_trial, daemon=True)
    thread.start()
    try:
        driver.wait(timeout=420)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
        log.close()
        thread.join(60)
    output = (tmp_path / "sweep.log").read_text(errors="replace")
    assert "error" not in events, events["error"]
    assert events.get("replaced"), f"node A was not lost mid-trial: {output[-3000:]}"
    assert events["killed"] >= 3, events  # raylet, agents, the R-SFT worker, the actor, ...
    assert driver.returncode == 0, output[-5000:]

    from mlflow import MlflowClient

    uri = config["tracking"]["uri"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nodeloss")
    parents = [r for r in client.search_runs([exp.experiment_id], "tags.`mm4ke.role` = 'sweep'")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    runs = child_runs(uri, parent)
    ok = [r for r in runs if r.data.tags.get("mm4ke.status") == "ok" and r.data.tags.get("mm4ke.kind") != "base"]
    names = [r.data.tags["mm4ke.candidate"] for r in ok]
    assert len(names) == len(set(names)) == 2 * 2, sorted(names)  # every candidate, exactly once
    assert len({r.data.tags["mm4ke.trial_id"] for r in ok}) == 2
    assert sorted(pareto_candidates(uri, parent, tmp_path)) == sorted(["base", *names])

    # The lost attempt is on record as a failed, retried attempt, not as a candidate.
    lost = [r for r in runs if r.data.tags.get("mm4ke.status") not in ("ok", None)]
    assert lost and all(r.info.status == "FAILED" for r in lost), [r.data.tags for r in runs]

    folder = Path(parents[0].data.tags["mm4ke.sweep_folder"])
    study = optuna.load_study(study_name="nodeloss", storage=journal_storage(folder / STUDY_FILE))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    points = [tuple(sorted(t.params.items())) for t in done]
    assert len(points) == len(set(points)) == len(names)  # each candidate told once, none twice
