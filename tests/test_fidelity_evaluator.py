"""`CandidateEvaluator.evaluate(rung=r)`: a lower rung scores the rung's seeded subset of records
and lm-eval documents (with the standard errors promotion needs), the last rung is the full
evaluation itself, and the base model is left as it was. Ray-free, a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import ZSRE
from fault_helpers import general_task

from mm4ke_ray.evaluate.candidate import CandidateEvaluator, EvalSettings
from mm4ke_ray.evaluate.fidelity import EDIT_SE, EVAL_DOCS, EVAL_RECORDS, GENERAL_SE
from mm4ke_ray.modeling import mlp_parameter_names


def _delta(model, layer: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: 0.05 * torch.randn(params[n].shape, generator=g) for n in mlp_parameter_names(model, layer)}


@pytest.fixture(scope="module")
def evaluators(tiny_model_dir, tmp_path_factory):
    tasks = tmp_path_factory.mktemp("tasks")
    common = dict(model=str(tiny_model_dir), edits=str(ZSRE), limit=9, batch_size=4,
                  general_tasks=(general_task(tasks, docs=18),), task_include_path=str(tasks))
    plain = CandidateEvaluator(EvalSettings(**common))
    halving = CandidateEvaluator(EvalSettings(**common, fidelity_rungs=2, fidelity_reduction_factor=3.0,
                                              fidelity_seed=5), reference=plain.reference)
    return plain, halving


def test_the_last_rung_is_the_full_evaluation_and_lower_rungs_score_subsets(evaluators):
    plain, halving = evaluators
    plan = halving.rung_plan()
    assert [len(r) for r in plan.edit_records] == [3, 9]
    assert [len(d) for d in plan.general_docs["faults_mc"]] == [6, 18]
    before = {k: v.clone() for k, v in halving.model.state_dict().items()}
    delta = _delta(halving.model, 2, 1)
    full = plain.evaluate(delta, 0.4, 0.2, seed=3)
    last = halving.evaluate(delta, 0.4, 0.2, seed=3, rung=1)
    low = halving.evaluate(delta, 0.4, 0.2, seed=3, rung=0)
    for key in full:
        if not key.endswith("seconds"):
            assert last[key] == full[key], key
    assert (full[EVAL_RECORDS], full[EVAL_DOCS]) == (9, 18)
    assert (low[EVAL_RECORDS], low[EVAL_DOCS]) == (3, 6)
    assert EDIT_SE not in full and GENERAL_SE not in full
    assert low[EDIT_SE] >= 0 and low[GENERAL_SE] > 0
    assert 0 <= low["edit_score"] <= 1 and 0 <= low["general_score"] <= 1
    # the same subset and seed: the same numbers again; the base restored bit for bit
    again = halving.evaluate(delta, 0.4, 0.2, seed=3, rung=0)
    assert {k: v for k, v in again.items() if not k.endswith("seconds")} == \
        {k: v for k, v in low.items() if not k.endswith("seconds")}
    after = halving.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_lower_rung_returns_its_per_item_scores_for_paired_comparisons(evaluators):
    import statistics

    from mm4ke_ray.evaluate.fidelity import RUNG_ITEMS, RungItems, paired_stderrs, rung_result
    from mm4ke_ray.schema import RETENTION_PREFIX

    plain, halving = evaluators
    delta = _delta(halving.model, 2, 1)
    full = halving.evaluate(delta, 0.4, 0.2, seed=3, rung=1)
    low = halving.evaluate(delta, 0.4, 0.2, seed=3, rung=0)
    other = halving.evaluate(delta, 0.9, 0.2, seed=3, rung=0)
    assert RUNG_ITEMS not in full  # the full rung is exact: nothing to compare with noise
    items = RungItems.from_dict(low[RUNG_ITEMS])
    assert (len(items.edit), items.edit_population) == (3, 9)
    assert {t: len(v) for t, v in items.general.items()} == {"faults_mc": 6}
    assert items.general_population == {"faults_mc": 18}
    # The per-document values over the base score average to the task's retention (before its cap).
    assert min(1.0, statistics.fmean(items.general["faults_mc"])) == pytest.approx(low[f"{RETENTION_PREFIX}faults_mc"])
    # Two merges of one delta line up item by item; a candidate against itself differs by exactly 0.
    a, b = rung_result("a", low), rung_result("b", other)
    assert a.items == items and all(se is not None for se in paired_stderrs(b.items, a.items))
    assert paired_stderrs(a.items, a.items) == (0.0, 0.0)
