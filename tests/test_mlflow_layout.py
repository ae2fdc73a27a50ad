"""How a sweep's experiment looks to MLflow 3's UI: a model-training experiment, readable summaries."""

from __future__ import annotations

import numpy as np
from mlflow import MlflowClient

from mm4ke_ray.schema import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker


def test_the_experiment_is_a_model_training_one_so_the_ui_opens_on_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "kindtest", str(tmp_path / "artifacts"))
    exp = MlflowClient(uri).get_experiment(tracker.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

    # An experiment made without the tag (older version, by hand) gets it when a sweep logs to it.
    client = MlflowClient(uri)
    old = client.create_experiment("untagged", artifact_location=(tmp_path / "old").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    SweepTracker(uri, "untagged")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_summary_metrics_on_the_parent_run_are_rounded(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "roundtest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("roundtest", params={}, tags={})
    score = float(np.float32(0.9925))  # 0.9924999475479126: what a float32 mean becomes
    assert score != 0.9925
    tracker.log_sweep_metrics({"best_combined_score": score, "trials_done": 3}, step=3)
    metrics = MlflowClient(uri).get_run(parent).data.metrics
    assert metrics["best_combined_score"] == 0.9925
    assert metrics["trials_done"] == 3


def test_the_printed_ui_link_opens_the_model_training_runs_view(tmp_path):
    from mm4ke_ray.tracking.query import ui_runs_url

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "urltest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("urltest", params={}, tags={})
    url = ui_runs_url(uri, parent)
    assert url == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert ui_runs_url(uri, "0" * 32) is None  # an unknown run: no hint, no error


def test_a_registered_export_gets_the_champion_alias_not_a_stage(tmp_path):
    from mm4ke_ray.tracking.registry import CHAMPION, register_export

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "regtest", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("regtest", params={}, tags={})
    run_id = tracker.log_candidate("t1-c0", {"alpha": 0.3}, {"combined_score": 0.9}, {"mm4ke.kind": "sampled"})
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("card")
    recipe = {"source": {"candidate_run_id": run_id, "sweep_name": "regtest", "sweep_run_id": parent,
                         "candidate": "t1-c0"},
              "base_model": "base", "merge": {"alpha": 0.3, "sparsity": 0.5},
              "edits": {"count": 5, "source": "edits.json"}, "recorded_metrics": {"combined_score": 0.9}}
    first = register_export(uri, out, "regtest-model", recipe)
    second = register_export(uri, out, "regtest-model", recipe)
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias("regtest-model", CHAMPION).version == second.version != first.version
    assert client.get_model_version("regtest-model", second.version).current_stage in (None, "None")
