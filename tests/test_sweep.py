"""The sweep end to end on a real local Ray (2 CPUs), real Optuna, real MLflow (SQLite)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ZSRE
from fault_helpers import SPACE, general_task

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory, tiny_model_dir):
    from mm4ke_ray.config import validate_config

    tmp = tmp_path_factory.mktemp("sweep")
    task = general_task(tmp / "tasks", name="sweeptest_mc")
    return validate_config({
        "name": "sweeptest",
        "model": {"name": str(tiny_model_dir)},
        "data": {"edits": str(ZSRE), "limit": 4},
        # Both metric families, the edit objective from the generated answers (issue 14).
        "evaluation": {"general_tasks": [task], "task_include_path": str(tmp / "tasks"), "batch_size": 8,
                       "mode": "both"},
        "search": {"num_trials": 4, "sampler": "tpe", "seed": 3, "space": SPACE},
        "merge": {"extra_candidates": 2},
        "objectives": {"edit_mode": "generation"},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "sweeptest",
                     "artifact_location": str(tmp / "artifacts")},
        "storage_path": str(tmp / "ray"),
    }, "test")


@pytest.fixture(scope="module")
def outcome(ray_2_cpus, sweep_config):
    from mm4ke_ray.search.driver import run_sweep

    return run_sweep(sweep_config)


def test_every_trial_evaluates_all_its_candidates(outcome):
    trials = {r["trial_id"] for r in outcome.rows}
    assert len(trials) == 4
    assert len(outcome.rows) == 4 * 3
    kinds = [r["kind"] for r in outcome.rows]
    assert kinds.count("sampled") == 4 and kinds.count("pure_rsft") + kinds.count("sampled") >= 4


def test_every_hyperparameter_takes_more_than_one_value(outcome):
    for name in ("threshold", "steps", "epochs", "lr", "layer", "alpha", "sparsity"):
        assert len({r[name] for r in outcome.rows}) > 1, name


def test_rsft_ran_once_per_trial(outcome, sweep_config):
    # Each R-SFT run is one Ray Train run with its own folder in the sweep's storage.
    train_runs = list((Path(sweep_config.storage_path) / sweep_config.name / "rsft").iterdir())
    assert len(train_runs) == outcome.rsft_runs == 4


def test_optuna_was_told_the_extra_points(outcome):
    in_space = [r for r in outcome.rows if r["kind"] != "sampled"]
    assert outcome.extra_points_told == len(in_space) == 8
    assert outcome.optuna_trials == 4 + 8


def test_all_candidates_are_child_runs_of_one_parent(outcome, sweep_config):
    from mlflow import MlflowClient

    client = MlflowClient(sweep_config.tracking.uri)
    exp = client.get_experiment_by_name("sweeptest")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("mm4ke.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.run_id == outcome.parent_run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    # Parent → one run per R-SFT trial (and the base's run) → the trial's candidate runs (issue 15.1).
    trial_runs = {r.info.run_id: r for r in children if r.data.tags.get("mm4ke.role") == "trial"}
    assert [r.data.tags.get("mm4ke.kind") for r in children if r.info.run_id not in trial_runs] == ["base"]
    assert len(trial_runs) == 4 and all(r.info.status == "FINISHED" for r in trial_runs.values())
    candidates = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in trial_runs]
    assert len(candidates) == len(outcome.rows) == 12
    for run in candidates:
        trial_run = trial_runs[run.data.tags["mlflow.parentRunId"]]
        assert trial_run.data.tags["mm4ke.trial_id"] == run.data.tags["mm4ke.trial_id"]
        assert trial_run.info.run_name.split()[0] == run.info.run_name.split()[-1][:3]  # "t03 L1 ..." / "α.30 s.57 t03c2"
        assert trial_run.data.params["lr"] == run.data.params["lr"]
    # Readable run names from Tune's trial numbers (1..4), the candidate id in a tag (issue 15.1).
    names = sorted(r.info.run_name for r in candidates)
    assert all(re.fullmatch(r"α\.\d\d s\.\d\d t0[1-4]c[0-2]", n) for n in names), names
    assert {n.split()[-1][:3] for n in names} == {"t01", "t02", "t03", "t04"}
    assert sorted(r.data.tags["mm4ke.candidate"] for r in candidates) == sorted(r["candidate"] for r in outcome.rows)
    for run in candidates:
        for key in ("threshold", "steps", "epochs", "lr", "layer", "alpha", "sparsity", "density"):
            assert key in run.data.params, key
        for key in ("edit_succ", "generalization", "locality", "edit_score", "general_score", "combined_score"):
            assert key in run.data.metrics, key
    # The delta of each trial is stored once, on the parent run.
    deltas = client.list_artifacts(outcome.parent_run_id, "deltas")
    assert len(deltas) == 4


def test_front_is_non_dominated(outcome):
    rows = [outcome.base, *outcome.rows]

    def dominated(a):
        return any(b["edit_score"] >= a["edit_score"] and b["general_score"] >= a["general_score"]
                   and (b["edit_score"] > a["edit_score"] or b["general_score"] > a["general_score"]) for b in rows)

    assert outcome.front and all(not dominated(r) for r in outcome.front)
    assert all(dominated(r) for r in rows if r not in outcome.front)


def test_the_real_sweep_publishes_its_front_and_exports_the_best(outcome, sweep_config, tmp_path, capsys):
    """Issue 4 on a sweep run by Ray Tune itself (general tasks included in the re-evaluation)."""
    import csv

    from mlflow import MlflowClient

    from mm4ke_ray.cli import main
    from mm4ke_ray.export.verify import verify_checksums

    client = MlflowClient(sweep_config.tracking.uri)
    folder = client.download_artifacts(outcome.parent_run_id, "pareto", str(tmp_path))
    front = list(csv.DictReader(open(Path(folder) / "front.csv")))
    everything = list(csv.DictReader(open(Path(folder) / "all.csv")))
    assert len(everything) == len(outcome.rows) + 1  # every candidate and the base
    assert {r["candidate"] for r in front} == {r["candidate"] for r in outcome.front}
    assert (Path(folder) / "front.png").stat().st_size > 0 and (Path(folder) / "front.html").stat().st_size > 0

    out = tmp_path / "export"
    args = ["export", "--tracking-uri", sweep_config.tracking.uri, "--sweep", "sweeptest", "--pick", "best",
            "--out", str(out)]
    assert main(args) == 0
    assert verify_checksums(out) == []
    recipe = json.loads((out / "mm4ke_merge.json").read_text())
    checked = recipe["verification"]["metrics"]
    assert recipe["verification"]["status"] == "passed"
    assert "general.sweeptest_mc" in checked and "edit_succ" in checked and "locality" in checked
    assert all(m["abs_diff"] <= recipe["verification"]["tolerance"] for m in checked.values())


def test_both_metric_families_reach_mlflow_and_the_edit_score_follows_generation(outcome, sweep_config):
    """Issue 14 in a real sweep: teacher-forced and gen.* metrics (and per-kind means) on every
    candidate run, the edit score computed from the generation family (objectives.edit_mode),
    and how the sweep trained and scored recorded on the parent run (issues 11, 14)."""
    from mlflow import MlflowClient

    from mm4ke_ray.evaluate.scores import edit_family, edit_score
    from mm4ke_ray.schema import EDIT_METRICS, GEN_EDIT_METRICS

    client = MlflowClient(sweep_config.tracking.uri)
    parent = client.get_run(outcome.parent_run_id)
    params = parent.data.params
    assert params["eval_mode"] == "both" and params["edit_mode"] == "generation"
    assert params["rsft_lr_schedule"] == "constant" and "answer tokens" in params["train_supervision"]
    assert params["general_apply_chat_template"] == "False" and params["general_metric.sweeptest_mc"] == "first"
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mm4ke.sweep_run_id` = '{parent.info.run_id}' "
                              "AND tags.`mm4ke.role` = 'candidate'", max_results=1000)
    assert len(runs) == len(outcome.rows) + 1  # the candidates and the base
    weights = dict(sweep_config.objectives.edit_weights)
    differ = 0
    for run in runs:
        m = run.data.metrics
        assert all(k in m for k in (*EDIT_METRICS, *GEN_EDIT_METRICS)), sorted(m)
        assert "gen.locality.Relation_Specificity" in m and "locality.Relation_Specificity" in m
        assert "general.sweeptest_mc.stderr" in m
        # general tasks present: the edit score is the weighted mean of the gen.* family
        assert m["edit_score"] == pytest.approx(edit_score(edit_family(m, "generation"), weights))
        differ += m["edit_score"] != pytest.approx(edit_score(edit_family(m, "teacher-forced"), weights))
    assert differ > 0  # the chosen family changed the objective somewhere


def test_a_general_task_at_chance_is_refused_before_anything_is_recorded(ray_2_cpus, tmp_path, tiny_model_dir):
    """Issue 11.2: the pool's base reference finds the task's score within noise of chance; the
    sweep stops (UserError: CLI exit 2, the task named) before a folder, a parent run or a trial."""
    from mlflow import MlflowClient

    from mm4ke_ray.config import validate_config
    from mm4ke_ray.errors import UserError
    from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task
    from mm4ke_ray.search.driver import run_sweep

    # Four identical choices: every choice ties, lm-eval picks the first, the answer is the second.
    rows = [{"question": f"Question {i}?", "choices": ["the same"] * 4, "answer_index": 1} for i in range(12)]
    task = write_multiple_choice_task("sweeptest_chance", rows, tmp_path / "tasks")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = validate_config({
        "name": "chance", "model": {"name": str(tiny_model_dir)}, "data": {"edits": str(ZSRE), "limit": 2},
        "evaluation": {"general_tasks": [task], "task_include_path": str(tmp_path / "tasks"), "batch_size": 8},
        "search": {"num_trials": 1, "space": SPACE}, "merge": {"extra_candidates": 1},
        "tracking": {"uri": uri, "experiment": "chance", "artifact_location": str(tmp_path / "artifacts")},
        "storage_path": str(tmp_path / "ray"),
    }, "test")
    with pytest.raises(UserError, match="'sweeptest_chance'.*within 2 stderr") as err:
        run_sweep(config)
    assert "evaluation.general_tasks" in str(err.value)  # the fix is named
    assert not (tmp_path / "ray" / "chance").exists()
    experiment = MlflowClient(uri).get_experiment_by_name("chance")
    assert experiment is None or not MlflowClient(uri).search_runs([experiment.experiment_id])
