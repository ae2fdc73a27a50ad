"""Two sweeps at once against one MLflow server and one storage path.

Two real `mm4ke-ray sweep` processes, each with its own local Ray, start together from the same
config (same sweep name, same MLflow experiment, same storage_path) against a real
`mlflow server` on 127.0.0.1. Each must get its own folder and its own parent run, neither may
write into the other's files, and each Pareto front must be the front of its own candidates.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml
from fault_helpers import (
    child_runs,
    cli_env,
    free_port,
    start_mlflow_server,
    stop_process_group,
    sweep_dict,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))


def _dominates(a: dict, b: dict, objectives) -> bool:
    sign = {o.name: 1 if o.mode == "max" else -1 for o in objectives}
    diffs = [sign[o.name] * (a[o.name] - b[o.name]) for o in objectives]
    return all(d >= 0 for d in diffs) and any(d > 0 for d in diffs)


def _artifact_rows(client, run_id: str, path: str, dest: Path) -> list[dict]:
    dest.mkdir(parents=True, exist_ok=True)
    with open(client.download_artifacts(run_id, path, str(dest))) as f:
        return list(csv.DictReader(f))


def _check_front(client, parent: str, children: list, dest: Path, objectives) -> list[str]:
    """The parent's pareto/ artifacts hold exactly its own candidates, and its front is theirs."""
    names = sorted(r.data.tags["mm4ke.candidate"] for r in children)
    table = _artifact_rows(client, parent, "pareto/all.csv", dest)
    assert sorted(r["candidate"] for r in table) == names
    points = {r.data.tags["mm4ke.candidate"]: {o.name: r.data.metrics[o.name] for o in objectives} for r in children}
    expected = sorted(n for n in names if not any(_dominates(points[m], points[n], objectives) for m in names))
    front = _artifact_rows(client, parent, "pareto/front.csv", dest)
    assert sorted(r["candidate"] for r in front) == expected
    return names


@pytest.fixture(scope="module")
def mlflow_port(tmp_path_factory):
    """One real `mlflow server` on 127.0.0.1 for this module's sweeps."""
    port = free_port()
    server = start_mlflow_server(tmp_path_factory.mktemp("server"), port)
    yield port
    stop_process_group(server)


def _at_once(n: int, fn) -> list:
    """`fn(i)` in n threads released together; their results (or exceptions) in order."""
    barrier, out = threading.Barrier(n), [None] * n

    def run(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_sweeps_starting_together_claim_distinct_folders(tmp_path):
    from mm4ke_ray.search.resume import MANIFEST, claim_experiment_folder

    storage = str(tmp_path / "ray")
    (tmp_path / "ray" / "twin-2").mkdir(parents=True)
    (tmp_path / "ray" / "twin-2" / MANIFEST).write_text("{}")  # an earlier sweep's folder
    folders = _at_once(8, lambda i: claim_experiment_folder(storage, "twin"))
    assert not [f for f in folders if isinstance(f, Exception)], folders
    assert len(set(folders)) == 8 and str(tmp_path / "ray" / "twin-2") not in folders
    assert all(Path(f).is_dir() and Path(f).parent == tmp_path / "ray" for f in folders)


def test_trackers_opening_a_new_experiment_together_share_it(mlflow_port):
    from mm4ke_ray.tracking.mlflow_tracker import SweepTracker

    uri = f"http://127.0.0.1:{mlflow_port}"
    trackers = _at_once(8, lambda i: SweepTracker(uri, "twin-new-experiment"))
    assert not [t for t in trackers if isinstance(t, Exception)], trackers
    assert len({t.experiment_id for t in trackers}) == 1


def _agent_ports(ray_tmp: Path) -> list[int]:
    """The HTTP ports the dashboard agents of the Ray under `ray_tmp` recorded (-1: no HTTP service)."""
    return [int(f.read_text()) for f in ray_tmp.glob("ray/session_2*/dashboard_agent_listen_port_*")]


def test_two_sweeps_at_once_share_nothing(tmp_path, tiny_model_dir, mlflow_port):
    import optuna
    from mlflow import MlflowClient

    from mm4ke_ray.evaluate.scores import OBJECTIVES
    from mm4ke_ray.search.resume import MANIFEST
    from mm4ke_ray.search.searcher import STUDY_FILE, journal_storage

    port = mlflow_port
    config = sweep_dict(tmp_path, tiny_model_dir, "twin", trials=1, extra=1,
                        tracking_uri=f"http://127.0.0.1:{port}")
    del config["tracking"]["artifact_location"]  # artifacts go through the server
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    procs, logs = [], []
    start = threading.Barrier(2)
    ray_tmps = [Path(tempfile.mkdtemp(prefix=f"tw{i}", dir="/tmp")) for i in (1, 2)]

    def launch(i: int):
        env = cli_env(ray_tmps[i - 1])
        log = open(tmp_path / f"sweep{i}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        start.wait()
        procs.append(subprocess.Popen([CLI, "sweep", str(tmp_path / "sweep.yaml")], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=tmp_path))

    threads = [threading.Thread(target=launch, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        for p in procs:
            p.wait(timeout=420)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"sweep{i}.log").read_text(errors="replace") for i in (1, 2)]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(o[-3000:] for o in outputs)
    # Each Ray's dashboard agent served HTTP on a port of its own (not both on Ray's fixed 52365).
    ports = [_agent_ports(t) for t in ray_tmps]
    assert all(len(p) == 1 and p[0] > 0 for p in ports) and ports[0] != ports[1], ports

    client = MlflowClient(f"http://127.0.0.1:{port}")
    exp = client.get_experiment_by_name("twin")
    parents = client.search_runs([exp.experiment_id], "tags.`mm4ke.role` = 'sweep'")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    folders = [Path(p.data.tags["mm4ke.sweep_folder"]) for p in parents]
    storage = Path(config["storage_path"])
    assert folders[0] != folders[1] and {f.parent for f in folders} == {storage}
    # Nothing in the shared storage path but the two sweeps' own folders.
    assert sorted(storage.iterdir()) == sorted(folders)

    seen_trials: set[str] = set()
    for parent, folder in zip(parents, folders, strict=True):
        parent_id = parent.info.run_id
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["parent_run_id"] == parent_id  # the folder is this sweep's
        runs = child_runs(client.tracking_uri, parent_id)
        cands = [r for r in runs if r.data.tags.get("mm4ke.kind") != "base"]
        assert all(r.data.tags.get("mm4ke.status") == "ok" for r in runs)
        assert len(cands) == 2 and len([r for r in runs if r.data.tags.get("mm4ke.kind") == "base"]) == 1
        trials = {r.data.tags["mm4ke.trial_id"] for r in cands}
        # Tune's trial folders here are exactly this sweep's trials, none of the other's.
        dirs = [p.name for p in folder.glob("sweep_trial_*")]
        assert len(dirs) == 1 and all(sum(t in d for d in dirs) == 1 for t in trials), (dirs, trials)
        assert not trials & seen_trials, (trials, seen_trials)
        seen_trials |= trials
        base = [r for r in runs if r.data.tags.get("mm4ke.kind") == "base"]
        _check_front(client, parent_id, [*cands, *base], tmp_path / "dl" / parent_id, OBJECTIVES)
        # Each sweep's Optuna study holds its own points only: 1 trial x 2 candidates.
        study = optuna.load_study(study_name="twin", storage=journal_storage(folder / STUDY_FILE))
        assert len(study.trials) == len(cands)
