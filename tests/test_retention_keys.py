"""Per-task retention, as a candidate logs it, reaches the Pareto table, the export recipe and
the model card (issue 26, "retention." vs "retention/").

The evaluator names it `retention/<task>` (schema.RETENTION_PREFIX); MLflow and every reader see
`retention.<task>`: the tracker logs MLflow keys ('/' → '.', `mlflow_tracker._metric_items`) and
rows are normalized the same way (`query.normalize_row`). The readers look for "retention.".
"""

from __future__ import annotations

import csv
from pathlib import Path

from mlflow import MlflowClient
from test_model_card import _recipe

from mm4ke_ray.export.card import model_card
from mm4ke_ray.export.writer import _metrics_only
from mm4ke_ray.schema import BASE, GENERAL_PREFIX, PARETO_DIR, RETENTION_PREFIX, SAMPLED, Tag
from mm4ke_ray.tracking.mlflow_tracker import SweepTracker
from mm4ke_ray.tracking.pareto_artifacts import publish_pareto
from mm4ke_ray.tracking.query import load_sweep

TASK = "logiqa20"


def _metrics(kept: float) -> dict:
    """A candidate's metrics under the names `CandidateEvaluator.evaluate` returns them."""
    return {"edit_succ": 80.0, "edit_score": 0.8, "general_score": kept, "combined_score": (0.8 + kept) / 2,
            f"{GENERAL_PREFIX}.{TASK}": 0.3 * kept, f"{RETENTION_PREFIX}{TASK}": kept}


def test_logged_retention_reaches_the_pareto_table_the_recipe_and_the_card(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "retention", str(tmp_path / "artifacts"))
    parent = tracker.start_sweep("retention", params={}, tags={})
    base = {"candidate": BASE, "kind": BASE, **_metrics(1.0)}
    tracker.log_candidate(BASE, {"alpha": None}, _metrics(1.0), {Tag.KIND: BASE, Tag.STATUS: "ok"})
    row = {"candidate": "t0-c0", "kind": SAMPLED, "trial_id": "t0", "alpha": 0.3, "sparsity": 0.1, **_metrics(0.875)}
    row["run_id"] = tracker.log_candidate("t0-c0", {"alpha": 0.3, "sparsity": 0.1}, _metrics(0.875),
                                          {Tag.KIND: SAMPLED, Tag.STATUS: "ok", Tag.TRIAL_ID: "t0"})
    publish_pareto(tracker, [row], base)  # the sweep's rows carry the evaluator's names
    tracker.finish()

    folder = Path(MlflowClient(uri).download_artifacts(parent, PARETO_DIR, str(tmp_path / "dl")))
    table = {r["candidate"]: r for r in csv.DictReader(open(folder / "all.csv"))}
    assert float(table["t0-c0"][f"retention.{TASK}"]) == 0.875 and float(table[BASE][f"retention.{TASK}"]) == 1.0

    candidate = next(c for c in load_sweep(uri, "retention").candidates if c["candidate"] == "t0-c0")
    recorded = _metrics_only(candidate)  # the recipe's `recorded_metrics`
    assert recorded[f"retention.{TASK}"] == 0.875 and recorded[f"general.{TASK}"] == 0.2625

    recipe = _recipe("Qwen/Qwen2.5-7B-Instruct")
    recipe["recorded_metrics"] = recorded
    rows = [line for line in model_card(recipe).splitlines() if line.startswith(f"| retention.{TASK} |")]
    assert len(rows) == 1 and "0.875" in rows[0], rows


def test_both_edit_families_reach_the_recipe_and_sit_side_by_side_in_the_card(tmp_path):
    """A sweep scored in both families (the demo's `evaluation.mode: both`): the recipe keeps the
    generated (WILD) numbers and per-kind means, and the card lists each right under its
    teacher-forced twin (issue 26 §3; the export used to keep the teacher-forced ones only)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "families", str(tmp_path / "artifacts"))
    tracker.start_sweep("families", params={}, tags={})
    metrics = {**_metrics(0.9), "gen.edit_succ": 40.0, "generalization": 70.0, "gen.generalization": 30.0,
               "portability.Subject_Aliasing": 60.0, "gen.portability.Subject_Aliasing": 20.0,
               "edit_score.stderr": 0.01, "eval_seconds": 3.0}
    tracker.log_candidate("t0-c0", {"alpha": 0.3, "sparsity": 0.1}, metrics,
                          {Tag.KIND: SAMPLED, Tag.STATUS: "ok", Tag.TRIAL_ID: "t0"})
    tracker.finish()
    candidate = next(c for c in load_sweep(uri, "families").candidates if c["candidate"] == "t0-c0")
    recorded = _metrics_only(candidate)
    assert {"gen.edit_succ", "gen.generalization", "gen.portability.Subject_Aliasing",
            "portability.Subject_Aliasing"} <= set(recorded)
    assert "edit_score.stderr" not in recorded and "eval_seconds" not in recorded  # not the model's numbers

    recipe = _recipe("Qwen/Qwen2.5-7B-Instruct")
    recipe["recorded_metrics"] = recorded
    labels = [line.split(" | ")[0][2:] for line in model_card(recipe).splitlines() if line.startswith("| ")]
    at = labels.index("Edit Succ. (%), teacher-forced")
    assert labels[at:at + 4] == ["Edit Succ. (%), teacher-forced", "Edit Succ. (%), generated (WILD)",
                                 "Generalization (%), teacher-forced", "Generalization (%), generated (WILD)"], labels
    kind = labels.index("portability.Subject_Aliasing, teacher-forced")
    assert labels[kind + 1] == "portability.Subject_Aliasing, generated (WILD)"
