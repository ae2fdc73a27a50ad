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
