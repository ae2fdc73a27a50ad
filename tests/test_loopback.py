"""A local sweep listens on the loopback interface only.

A real `mm4ke-ray sweep` process with its own local Ray runs a small sweep (R-SFT through Ray
Train, so the Train worker's sockets count too); while it runs, every listening TCP socket of its
process tree (the driver, GCS, raylet, dashboard and its agents, the runtime-env agent, every
worker and actor) is sampled. None may be bound outside 127.0.0.1/::1.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import yaml
from fault_helpers import cli_env, sweep_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("mm4ke-ray"))
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def sweep_processes(root: int, marker: str) -> dict[int, str]:
    """pid → title of `root`, its descendants, and any process naming `marker` (the sweep's Ray temp
    dir) on its command line: Ray's daemons reparented away from the driver are found by that."""
    out = {}
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in psutil.process_iter():
        try:
            if marker in " ".join(p.cmdline()):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    for p in procs:
        try:
            cmd = p.cmdline()
            out[p.pid] = cmd[0] if cmd and cmd[0].startswith("ray::") else p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def listening(pids: dict[int, str]) -> dict[str, set[str]]:
    """Process title → the 'ip:port' of every listening TCP socket those pids hold."""
    out: dict[str, set[str]] = {}
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.setdefault(pids[c.pid], set()).add(f"{c.laddr.ip}:{c.laddr.port}")
    return out


def watch_listeners(proc: subprocess.Popen, marker: str, every: float = 1.0) -> dict[str, set[str]]:
    """Sample the listening sockets of `proc`'s sweep until it exits; the union of what was seen."""
    seen: dict[str, set[str]] = {}
    while proc.poll() is None:
        for title, addrs in listening(sweep_processes(proc.pid, marker)).items():
            seen.setdefault(title, set()).update(addrs)
        try:
            proc.wait(timeout=every)
        except subprocess.TimeoutExpired:
            pass
    return seen


def outside_loopback(seen: dict[str, set[str]]) -> dict[str, list[str]]:
    bad = {t: sorted(a for a in addrs if a.rsplit(":", 1)[0] not in LOOPBACK) for t, addrs in seen.items()}
    return {t: a for t, a in bad.items() if a}


def test_local_sweep_listens_on_loopback_only(tmp_path, tiny_model_dir):
    config = sweep_dict(tmp_path, tiny_model_dir, "loopback", trials=1, extra=1, runner="train")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    ray_tmp = tempfile.mkdtemp(prefix="lb", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = cli_env(Path(ray_tmp))
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the product must not rely on the caller's env
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen([CLI, "sweep", str(tmp_path / "sweep.yaml")], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            seen = watch_listeners(proc, ray_tmp)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    output = (tmp_path / "sweep.log").read_text(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    assert "Pareto front of loopback" in output

    # The sampling saw the whole tree: Ray's servers, the R-SFT worker and the merge-eval actor.
    titles = set(seen)
    for part in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::MergeEvalActor"):
        assert any(t.startswith(part) for t in titles), (part, sorted(titles))
    assert any(t.startswith("ray::RayTrainWorker") for t in titles), sorted(titles)
    assert not outside_loopback(seen), outside_loopback(seen)
