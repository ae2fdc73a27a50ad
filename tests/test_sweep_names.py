"""`--sweep NAME` when two sweeps share a name (issue 26 §4): refused with the run ids listed,
never the newest picked silently; a run id still names one."""

from __future__ import annotations

import pytest

from mm4ke_ray.errors import UserError
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.query import load_sweep


def test_a_shared_sweep_name_is_refused_with_each_run_id_listed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = SweepTracker(uri, "demo", str(tmp_path / "a")).start_sweep("demo", params={}, tags={})
    assert load_sweep(uri, "demo").run_id == first  # one sweep of that name: the name is enough
    second = SweepTracker(uri, "demo", str(tmp_path / "a")).start_sweep("demo", params={}, tags={})
    with pytest.raises(UserError) as err:
        load_sweep(uri, "demo")
    text = str(err.value)
    assert "2 sweep runs are named 'demo'" in text and "--sweep RUN_ID" in text
    assert text.index(second) < text.index(first)  # newest first
    assert load_sweep(uri, second).run_id == second and load_sweep(uri, first).run_id == first


def test_the_command_refuses_a_shared_name_as_a_person_types_it(tmp_path):
    """`pareto --sweep demo` after two sweeps named demo: an error with both run ids, no table;
    `--help` says so instead of promising the newest."""
    import subprocess
    import sys

    from fault_helpers import cli_env

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = [SweepTracker(uri, "demo", str(tmp_path / "a")).start_sweep("demo", params={}, tags={}) for _ in range(2)]
    cli = [sys.executable, "-m", "mm4ke_ray.cli", "pareto"]
    env = {**cli_env(tmp_path), "COLUMNS": "80"}
    proc = subprocess.run([*cli, "--tracking-uri", uri, "--sweep", "demo"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode != 0 and "Pareto front" not in proc.stdout, proc.stdout[-2000:]
    assert all(run in proc.stderr for run in runs) and "--sweep RUN_ID" in proc.stderr, proc.stderr[-2000:]
    helped = subprocess.run([*cli, "--help"], capture_output=True, text=True, env=env, timeout=300)
    text = " ".join(helped.stdout.split())
    assert "refused, with the run ids, when several sweeps share it" in text and "newest" not in text
