"""Runner 'train-local' (issue 28 §3): R-SFT through Ray Train's local mode, in the trial's own
process, which Tune keeps for the next trial. The same seeded sweep gives the same candidates
and scores as another runner, without starting a Ray Train controller or worker."""

from __future__ import annotations

import pytest
from conftest import ZSRE
from fault_helpers import SPACE

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCORES = ("edit_score", "general_score", "combined_score", "edit_succ", "locality")


def _config(tmp, model_dir, runner: str):
    from mm4ke_ray.config import validate_config

    return validate_config({
        "name": f"runner-{runner}", "model": {"name": str(model_dir)},
        "data": {"edits": str(ZSRE), "limit": 4}, "evaluation": {"batch_size": 8},
        "search": {"num_trials": 2, "sampler": "tpe", "seed": 3, "space": SPACE, "rsft": {"runner": runner}},
        "merge": {"extra_candidates": 1},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": f"runner-{runner}",
                     "artifact_location": str(tmp / "artifacts")},
        "storage_path": str(tmp / "ray"),
    }, "test")


def _train_actors() -> list[str]:
    """The classes of the Ray Train actors (controllers, workers) this Ray has started, alive or not."""
    from ray._private.state import actors  # the GCS's table: no dashboard needed

    names = [a["ActorClassName"] for a in actors().values()]
    return [n for n in names if "Train" in n or "Worker" in n and "MergeEval" not in n]


def test_local_mode_gives_the_same_candidates_without_a_worker_group(ray_2_cpus, tmp_path, tiny_model_dir):
    """The reference is runner 'task' (R-SFT in a Ray task: seeded and deterministic on a CPU
    wherever it runs), the cheapest to start; 'train' is covered by the other sweep tests."""
    from mm4ke_ray.search.driver import run_sweep

    local = run_sweep(_config(tmp_path / "local", tiny_model_dir, "train-local"))
    assert _train_actors() == []  # local mode: no Ray Train controller or worker was started
    train = run_sweep(_config(tmp_path / "task", tiny_model_dir, "task"))
    assert local.rsft_runs == train.rsft_runs == 2

    def key(row):
        return row["trial_id"] is None, row["kind"], row.get("alpha"), row.get("sparsity"), row.get("lr")

    mine, theirs = sorted(local.rows, key=key), sorted(train.rows, key=key)
    assert [key(r)[1:] for r in mine] == [key(r)[1:] for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert {k: a.get(k) for k in SCORES} == {k: b.get(k) for k in SCORES}
