"""Successive halving in a real tiny sweep (issue 13, part 1): the same sweep, seed and
candidates with `evaluation.fidelity` on and off.

On: every candidate is scored at rung 0 on a seeded subset of the records and of the lm-eval
task's documents; those dominated at rung 0 among their trial's candidates are pruned. Pruned
candidates have an MLflow run with their rung-0 metrics and status `pruned`, but no candidate
row: not in all.csv, not on the front, not told to Optuna. Full-fidelity candidates are exactly
the rows, and their values are those of the sweep without halving (the last rung is the full
evaluation). Evaluation compute (records, documents) is counted, and is smaller with halving.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import optuna
import pytest
from fault_helpers import child_runs, pareto_candidates, sweep_dict

from mm4ke_ray.config import validate_config
from mm4ke_ray.evaluate.fidelity import promote, rung_result
from mm4ke_ray.schema import Tag

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXTRA = 5  # six candidates per trial
# An R-SFT that edits (a high learning rate, enough steps), so candidates differ and some are dominated.
SPACE = {"lr": 0.01, "steps": 3, "epochs": 3, "layer": 1, "threshold": 0.05, "alpha": {"low": 0.0, "high": 0.95}}
# The loosest evidence rule (error rate 0.5: any lead on the differing items, in both objectives),
# so that 3 records and 8 documents at rung 0 can prune at all.
FIDELITY = {"enabled": True, "rungs": 2, "reduction_factor": 3, "error_rate": 0.5}


def _config(tmp: Path, model_dir: Path, name: str, halving: bool):
    data = sweep_dict(tmp, model_dir, name, trials=1, extra=EXTRA, limit=9, seed=7, general=True, space=SPACE)
    if halving:
        data["evaluation"]["fidelity"] = FIDELITY
    return validate_config(data)


@pytest.fixture(scope="module")
def sweeps(ray_2_cpus, tmp_path_factory, tiny_model_dir):
    from mm4ke_ray.search.driver import run_sweep

    tmp = tmp_path_factory.mktemp("halving")
    on = _config(tmp / "on", tiny_model_dir, "halving_on", True)
    off = _config(tmp / "off", tiny_model_dir, "halving_off", False)
    with contextlib.redirect_stderr(io.StringIO()) as said:  # what a person reads (issue 26 §4)
        halved = run_sweep(on)
    TERMINAL["on"] = said.getvalue()
    return on, off, halved, run_sweep(off)


TERMINAL: dict[str, str] = {}  # the halving sweep's terminal text


def test_the_terminal_says_per_trial_how_many_candidates_each_rung_kept(sweeps):
    on, _, outcome, _ = sweeps
    ok, pruned = _runs(on, outcome)
    line = re.search(r"t\d+ halving: rung 0: (\d+) → full rung 1: (\d+) · (\d+) pruned", TERMINAL["on"])
    assert line, TERMINAL["on"][-3000:]
    assert [int(g) for g in line.groups()] == [EXTRA + 1, len(ok), len(pruned)]


def _runs(config, outcome) -> tuple[list, list]:
    """(ok candidate runs, pruned runs) of a sweep, from MLflow; the base left out."""
    runs = [r for r in child_runs(config.tracking.uri, outcome.parent_run_id) if r.data.tags.get(Tag.KIND) != "base"]
    return ([r for r in runs if r.data.tags.get(Tag.STATUS) == "ok"],
            [r for r in runs if r.data.tags.get(Tag.STATUS) == "pruned"])


def test_pruned_candidates_are_logged_with_rung_metrics_but_are_no_candidates(sweeps, tmp_path):
    on, _, a, _ = sweeps
    ok, pruned = _runs(on, a)
    assert len(ok) + len(pruned) == EXTRA + 1
    assert pruned, "rung 0 pruned nobody: the test's seed should give a dominated candidate"
    ids = {r["candidate"] for r in a.rows}
    assert ids == {r.data.tags[Tag.CANDIDATE] for r in ok}
    assert a.rows[0]["kind"] == "sampled"  # the sampled candidate always reaches the full rung
    for run in pruned:
        m = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags[Tag.CANDIDATE] not in ids
        assert m["fidelity.rung"] == 0 and "edit_score" not in m and "general_score" not in m
        assert {"rung0.edit_score", "rung0.general_score", "rung0.eval_records", "rung0.eval_docs"} <= set(m)
        assert m["rung0.eval_records"] == 3 and m["rung0.eval_docs"] == 8  # 9 records, 24 docs: a third
    for row in a.rows:  # full candidates carry their rung-0 metrics beside the full ones
        assert row["fidelity.rung"] == 1 and row["eval_records"] == 9 and row["eval_docs"] == 24
        assert row["rung0.eval_records"] == 3 and row["fidelity.reused_rungs"] == 0  # a first run reads nothing back
        assert row["fidelity.front_points"] == 1  # the one trial's front so far: the base
    # Each rung's results are on record in the sweep's folder as soon as they are in (resume mid-rung)
    records = list((Path(a.experiment_dir) / "rungs").glob("*.json"))
    rungs = json.loads(records[0].read_text())["rungs"]
    assert len(records) == 1 and sorted(rungs) == ["0", "1"]
    # all.csv and the front hold the full-fidelity candidates only
    listed = set(pareto_candidates(on.tracking.uri, a.parent_run_id, tmp_path))
    assert listed - {a.base["candidate"]} == ids
    assert {r["candidate"] for r in a.front} <= ids | {a.base["candidate"]}
    # promotion, recomputed from the recorded rung-0 results (with their per-item scores), pruned
    # exactly these; the logged rung-0 metrics are those results
    results = [rung_result(i, m) for i, m in rungs["0"].items()]
    base = (a.base["edit_score"], a.base["general_score"])
    kept = set(promote(results, FIDELITY["reduction_factor"], FIDELITY["error_rate"], front=[base]))
    assert kept | {"0"} == set(rungs["1"]) and len(rungs["1"]) == len(ok)  # "0": the sampled one
    logged = sorted((r.data.metrics["rung0.edit_score"], r.data.metrics["rung0.general_score"]) for r in ok + pruned)
    assert logged == sorted(r.values() for r in results)


def test_only_full_fidelity_points_are_told_to_optuna(sweeps):
    from mm4ke_ray.search.searcher import STUDY_FILE, journal_storage

    on, _, a, _ = sweeps
    study = optuna.load_study(study_name=on.name, storage=journal_storage(Path(a.experiment_dir) / STUDY_FILE))
    told = sorted((round(t.params["alpha"], 9), round(t.params["sparsity"], 9)) for t in study.get_trials()
                  if t.state == optuna.trial.TrialState.COMPLETE)
    rows = sorted((round(r["alpha"], 9), round(r["sparsity"], 9)) for r in a.rows)
    assert told == rows  # (every candidate here is inside the space)


def test_full_values_equal_the_sweep_without_halving_at_less_evaluation_compute(sweeps):
    on, off, a, b = sweeps
    assert len(b.rows) == EXTRA + 1
    plain = {(r["alpha"], r["sparsity"]): r for r in b.rows}
    for row in a.rows:  # same seed: same R-SFT delta and candidates; the full rung is the full evaluation
        same = plain[(row["alpha"], row["sparsity"])]
        for key in ("edit_score", "general_score", "edit_succ", "locality"):
            assert row[key] == same[key], key
    ok, pruned = _runs(on, a)
    halving = sum(r.data.metrics["compute.records"] for r in ok + pruned)
    full = sum(r.data.metrics["compute.records"] for r in _runs(off, b)[0])
    assert full == (EXTRA + 1) * 9
    # rung 0 for all; for the promoted, the full rung's items less those rung 0 scored (reused)
    assert halving == (EXTRA + 1) * 3 + len(ok) * (9 - 3)
    docs = sum(r.data.metrics["compute.docs"] for r in ok + pruned)
    assert docs == (EXTRA + 1) * 8 + len(ok) * (24 - 8)
    assert all(r.data.metrics["compute.reused_records"] == 3 and r.data.metrics["compute.reused_docs"] == 8 for r in ok)
    # So halving never costs more items than the full evaluation of everyone, and pays off with
    # every pruned candidate; this seed prunes half (deterministic: same seed, same subsets).
    assert halving < full and len(pruned) >= 3
    assert halving < full and docs < (EXTRA + 1) * 24


def test_a_full_fidelity_candidate_exports_and_a_pruned_one_is_no_candidate(sweeps, tmp_path):
    from mm4ke_ray.cli import main

    on, _, a, _ = sweeps
    _, pruned = _runs(on, a)
    uri = on.tracking.uri
    # The export re-evaluates in full and compares every recorded metric but the rung/compute ones.
    assert main(["export", "--tracking-uri", uri, "--sweep", a.parent_run_id, "--pick", a.rows[0]["candidate"],
                 "--out", str(tmp_path / "full"), "--device", "cpu"]) == 0
    gone = pruned[0].data.tags[Tag.CANDIDATE]
    assert main(["export", "--tracking-uri", uri, "--sweep", a.parent_run_id, "--pick", gone,
                 "--out", str(tmp_path / "pruned"), "--device", "cpu"]) == 2
    assert not (tmp_path / "pruned").exists()


def test_export_verification_leaves_the_halving_bookkeeping_out_and_compares_the_rest():
    from mm4ke_ray.export.verify import compare_metrics

    recorded = {"edit_score": 0.5, "fidelity.rung": 2.0, "fidelity.reused_rungs": 1.0, "fidelity.front_points": 3.0,
                "rung0.edit_score": 0.4, "compute.records": 12.0}
    table, problems = compare_metrics(recorded, {"edit_score": 0.5}, 1e-6)
    assert list(table) == ["edit_score"] and problems == []
    _, problems = compare_metrics(recorded, {"edit_score": 0.7}, 1e-6)  # a real difference still fails
    assert len(problems) == 1 and problems[0].startswith("edit_score")
