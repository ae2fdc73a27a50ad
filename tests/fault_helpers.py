"""Helpers for the reliability tests: small sweep configs, MLflow queries, process killers.

Faults are injected from the tests only (a process killed by pid, a server stopped); nothing
in the product knows it is being tested.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from conftest import ZSRE

SPACE = {
    "threshold": {"low": 0.01, "high": 0.2, "log": True}, "steps": {"low": 1, "high": 3},
    "epochs": {"low": 1, "high": 2}, "lr": {"low": 1e-4, "high": 1e-3, "log": True},
    "layer": {"choices": [0, 1, 2, 3]}, "alpha": {"low": 0.0, "high": 0.8},
    "sparsity": {"low": 0.0, "high": 0.8},
}


def general_task(folder: Path, docs: int = 24, name: str = "faults_mc") -> str:
    """A local lm-eval multiple-choice task over real ZsRE locality questions.

    Informative for an untrained tiny model too: each distractor is two other answers joined, so
    its summed log-likelihood (lm-eval's `acc`) is lower and the model's base score sits far
    above chance (1/4); with single-answer distractors a random model scores at chance and the
    sweep's noise guard rightly refuses the task.
    """
    from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task

    records = json.loads(ZSRE.read_text())[20 : 20 + docs]
    answers = [r["locality"]["Relation_Specificity"][0]["ground_truth"][0] for r in records]
    rows = []
    for i, r in enumerate(records):
        pool = [a for a in answers if a != answers[i]]
        others = [f"{pool[(i + j) % len(pool)]} {pool[(i + j + 7) % len(pool)]}" for j in range(3)]
        rows.append({"question": r["locality"]["Relation_Specificity"][0]["prompt"],
                     "choices": [answers[i], *others], "answer_index": 0})
    return write_multiple_choice_task(name, rows, folder)


def sweep_dict(tmp: Path, model_dir: Path, name: str, *, trials: int = 2, runner: str = "task",
               extra: int = 1, limit: int = 4, seed: int = 3, space: dict | None = None,
               tracking_uri: str | None = None, general: bool = False, optimizer: str = "adamw") -> dict:
    """A small valid sweep config (as a dict) writing everything under `tmp`."""
    evaluation = {"batch_size": 8}
    if general:
        evaluation.update(general_tasks=[general_task(tmp / "tasks")], task_include_path=str(tmp / "tasks"))
    return {
        "name": name,
        "model": {"name": str(model_dir)},
        "data": {"edits": str(ZSRE), "limit": limit},
        "evaluation": evaluation,
        "search": {"num_trials": trials, "sampler": "tpe", "seed": seed, "space": {**SPACE, **(space or {})},
                   "rsft": {"runner": runner, "optimizer": optimizer}},
        "merge": {"extra_candidates": extra},
        "tracking": {"uri": tracking_uri or f"sqlite:///{tmp}/mlflow.db", "experiment": name,
                     "artifact_location": str(tmp / "artifacts")},
        "storage_path": str(tmp / "ray"),
    }


def child_runs(uri: str, parent_run_id: str) -> list:
    """Every candidate run (failed attempts and the base included) of the sweep whose parent run is
    `parent_run_id`, however they nest (the base under the parent, the others under their trial's run)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`mm4ke.role` = 'candidate' AND "
                              f"tags.`mm4ke.sweep_run_id` = '{parent_run_id}'", max_results=5000)


def trial_runs(uri: str, parent_run_id: str) -> list:
    """The R-SFT trial runs directly under the sweep's parent run."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`mm4ke.role` = 'trial' AND "
                              f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=5000)


def pareto_candidates(uri: str, parent_run_id: str, tmp: Path) -> list[str]:
    """The `candidate` column of the parent run's pareto/all.csv artifact."""
    import csv

    from mlflow import MlflowClient

    local = MlflowClient(uri).download_artifacts(parent_run_id, "pareto/all.csv", str(tmp))
    with open(local) as f:
        return [row["candidate"] for row in csv.DictReader(f)]


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; that value, or AssertionError."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def alive_actor_pids(class_name: str) -> list[int]:
    """Pids of this Ray cluster's ALIVE actors of `class_name` (state API)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")], detail=True)
    return [a.pid for a in actors if a.pid]


class Killer(threading.Thread):
    """Runs `find()` until it returns a pid, then SIGKILLs that process once; records what it did."""

    def __init__(self, find, timeout: float = 300.0):
        super().__init__(daemon=True)
        self.find, self.timeout = find, timeout
        self.killed: int | None = None
        self.error: BaseException | None = None

    def run(self):
        try:
            pid = wait_for(self.find, self.timeout, 0.05, what="a process to kill")
            os.kill(pid, signal.SIGKILL)
            self.killed = pid
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int, log_name: str = "server.log") -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with a SQLite backend and proxied artifacts in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / log_name, "a")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    from mm4ke_ray.tracking.buffer import reachable

    try:
        wait_for(lambda: reachable(f"http://127.0.0.1:{port}", timeout=1), 120, 0.5, "mlflow server")
    except AssertionError:
        stop_process_group(proc)
        raise
    return proc


def wait_for_health(server: subprocess.Popen, port: int, log: Path | None = None, deadline_s: float = 300) -> None:
    """Until the MLflow UI on `port` answers /health (~15 s on an idle machine; minutes on a busy
    2-core one); fail at once if `server` exits, with the end of its `log`."""
    deadline = time.time() + deadline_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            assert server.poll() is None and time.time() < deadline, tail
            time.sleep(1)


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill a process we started with start_new_session=True, with its children (e.g. uvicorn workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def cli_env(tmp: Path) -> dict:
    """Environment for an `mm4ke-ray` subprocess: its own Ray temp dir, offline, one thread."""
    env = dict(os.environ)
    env.update(RAY_TMPDIR=str(tmp), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env
