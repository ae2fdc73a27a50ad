"""`merge.candidates: surrogate` in a real sweep (local Ray, 2 CPUs, Optuna, MLflow on SQLite):
each trial evaluates at most `extra_candidates + 1` merges, those beyond the sampled one on the
α × sparsity grid, and every one of them reaches the sampler (issue 24 §3)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import ZSRE
from fault_helpers import SPACE, general_task

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXTRA, GRID, TRIALS = 5, 3, 2


@pytest.fixture(scope="module")
def outcome(ray_2_cpus, tmp_path_factory, tiny_model_dir):
    from mm4ke_ray.config import validate_config
    from mm4ke_ray.search.driver import run_sweep

    tmp = tmp_path_factory.mktemp("surrogate_sweep")
    task = general_task(tmp / "tasks", name="surrogate_mc")
    config = validate_config({
        "name": "surrogatesweep",
        "model": {"name": str(tiny_model_dir)},
        "data": {"edits": str(ZSRE), "limit": 4},
        "evaluation": {"general_tasks": [task], "task_include_path": str(tmp / "tasks"), "batch_size": 8},
        "search": {"num_trials": TRIALS, "sampler": "tpe", "seed": 3, "space": SPACE, "rsft": {"runner": "task"}},
        "merge": {"extra_candidates": EXTRA, "candidates": "surrogate", "grid": GRID},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "surrogatesweep",
                     "artifact_location": str(tmp / "artifacts")},
        "storage_path": str(tmp / "ray"),
    }, "test")
    return run_sweep(config)


def test_each_trial_spends_at_most_its_budget_on_the_grid(outcome):
    grid = {(round(a, 6), round(s, 6)) for a, s in itertools.product(np.linspace(0, 0.8, GRID), repeat=2)}
    by_trial: dict = {}
    for r in outcome.rows:
        by_trial.setdefault(r["trial_id"], []).append(r)
    assert len(by_trial) == TRIALS == outcome.rsft_runs
    for rows in by_trial.values():
        assert 4 <= len(rows) <= EXTRA + 1  # the first batch (sampled, pure R-SFT, 2 space-filling), then chosen
        assert [r["kind"] for r in rows].count("sampled") == 1
        others = {(round(r["alpha"], 6), round(r["sparsity"], 6)) for r in rows if r["kind"] != "sampled"}
        assert others <= grid and len(others) == len(rows) - 1


def test_every_evaluated_merge_is_told_to_optuna(outcome):
    extra = [r for r in outcome.rows if r["kind"] != "sampled"]
    assert outcome.extra_points_told == len(extra)
    assert outcome.optuna_trials == len(outcome.rows)
