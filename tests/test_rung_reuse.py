"""Successive halving never pays for a rung twice nor for a rung that cannot give evidence (issue 23 §4).

- Reuse: a promoted candidate's next rung scores only the items it adds to the candidate's last
  rung and joins them with what that rung scored (`rung_reuse.py`); the joined rung, the full one
  included, gives the very numbers a scoring of the whole rung gives.
- Raise and skip: a lower rung gets at least the items the sign test needs at the error rate, and
  is skipped where it cannot have them or would score the same items as the rung above
  (`rung_plan.py`); the trial does not evaluate a skipped rung.
A tiny model, in process (the trial's loop with stand-in actors, no Ray).
"""

from __future__ import annotations

import types

import pytest
import torch
from conftest import ZSRE
from fault_helpers import general_task

from mm4ke_ray.evaluate.candidate import CandidateEvaluator, EvalSettings
from mm4ke_ray.evaluate.evidence import min_sign_items
from mm4ke_ray.evaluate.general import GeneralResult
from mm4ke_ray.evaluate.rung_plan import halving_cost, plan_rungs, rung_sizes
from mm4ke_ray.evaluate.rung_reuse import (
    REUSE,
    REUSED_DOCS,
    REUSED_RECORDS,
    can_join,
    general_payload,
    scored_items,
)
from mm4ke_ray.modeling import mlp_parameter_names

WEIGHTS = {"edit_succ": 1, "generalization": 1, "portability": 1, "locality": 1}
BOOKKEEPING = ("eval_seconds", "merge_seconds", REUSE, REUSED_RECORDS, REUSED_DOCS)


def _delta(model, layer: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: 0.05 * torch.randn(params[n].shape, generator=g) for n in mlp_parameter_names(model, layer)}


def _same(got: dict, want: dict) -> None:
    """Every metric equal (not approximately), timings and reuse bookkeeping apart."""
    keys = {k for k in want if k not in BOOKKEEPING}
    assert {k for k in got if k not in BOOKKEEPING} == keys
    for k in sorted(keys):
        assert got[k] == want[k], k


@pytest.fixture(scope="module")
def evaluators(tiny_model_dir, tmp_path_factory):
    tasks = tmp_path_factory.mktemp("tasks")
    common = dict(model=str(tiny_model_dir), edits=str(ZSRE), limit=9, batch_size=4, edit_weights=WEIGHTS,
                  general_tasks=(general_task(tasks, docs=18),), task_include_path=str(tasks))
    plain = CandidateEvaluator(EvalSettings(**common))
    halving = CandidateEvaluator(EvalSettings(**common, fidelity_rungs=3, fidelity_reduction_factor=3.0,
                                              fidelity_seed=5), reference=plain.reference)
    return plain, halving, common


def test_a_joined_rung_gives_the_numbers_of_the_whole_rung_and_scores_only_its_new_items(evaluators):
    plain, halving, _ = evaluators
    plan = halving.rung_plan()
    assert [len(r) for r in plan.edit_records] == [1, 3, 9] and plan.skipped == ()
    docs = [len(d) for d in plan.general_docs["faults_mc"]]
    delta = _delta(halving.model, 2, 1)
    low = halving.evaluate(delta, 0.6, 0.2, seed=3, rung=0)
    direct = halving.evaluate(delta, 0.6, 0.2, seed=3, rung=1)
    joined = halving.evaluate(delta, 0.6, 0.2, seed=3, rung=1, prior=low[REUSE])
    _same(joined, direct)  # objectives, SEs, per-item scores for the paired tests, every metric
    assert joined[REUSE] == direct[REUSE]  # and what the next rung reuses
    assert (joined[REUSED_RECORDS], joined[REUSED_DOCS]) == (1, docs[0])
    assert scored_items(joined) == (2, docs[1] - docs[0]) and scored_items(direct) == (3, docs[1])
    full = plain.evaluate(delta, 0.6, 0.2, seed=3)
    _same(halving.evaluate(delta, 0.6, 0.2, seed=3, rung=2, prior=joined[REUSE]), full)
    # from two rungs below (the rung between skipped): the same full evaluation again
    top = halving.evaluate(delta, 0.6, 0.2, seed=3, rung=2, prior=low[REUSE])
    _same(top, full)
    assert REUSE not in top and scored_items(top) == (8, docs[2] - docs[0])


def test_a_prior_that_cannot_be_joined_scores_the_whole_rung(evaluators):
    _, halving, _ = evaluators
    delta = _delta(halving.model, 1, 2)
    low = halving.evaluate(delta, 0.3, 0.0, seed=3, rung=0)
    direct = halving.evaluate(delta, 0.3, 0.0, seed=3, rung=1)
    for prior in ({**low[REUSE], "general": None}, {**low[REUSE], "rung": 1}):  # a group's result; no new item
        got = halving.evaluate(delta, 0.3, 0.0, seed=3, rung=1, prior=prior)
        _same(got, direct)
        assert REUSED_RECORDS not in got and scored_items(got) == scored_items(direct)


def test_generation_mode_and_fluency_join_too(tiny_model_dir, tmp_path_factory):
    # No general tasks: locality stands in as the general objective; every record's fluency
    # sample is seeded by its place in the whole edit set, so it is the same in every subset.
    common = dict(model=str(tiny_model_dir), edits=str(ZSRE), limit=9, batch_size=4, edit_weights=WEIGHTS,
                  eval_mode="both", fluency=True, generation_max_new_tokens=8)
    plain = CandidateEvaluator(EvalSettings(**common))
    halving = CandidateEvaluator(EvalSettings(**common, fidelity_rungs=2, fidelity_reduction_factor=2.0,
                                              fidelity_seed=1), reference=plain.reference)
    delta = _delta(halving.model, 2, 4)
    low = halving.evaluate(delta, 0.8, 0.1, seed=3, rung=0)
    assert "gen.edit_succ" in low and "fluency" in low
    _same(halving.evaluate(delta, 0.8, 0.1, seed=3, rung=1, prior=low[REUSE]), plain.evaluate(delta, 0.8, 0.1, seed=3))


def test_only_results_of_per_document_means_can_be_joined():
    def result(**kw):
        base = dict(scores={"a": 0.5}, stderr={"a": 0.1}, chance={"a": 0.25}, n_docs={"a": 2}, metrics={"a": "acc"},
                    higher_is_better={"a": True}, per_doc={"a": [0.0, 1.0]}, doc_chance={"a": [0.25, 0.25]})
        return GeneralResult(**{**base, **kw})

    assert general_payload(result()) == {"a": {"values": [0.0, 1.0], "chance": [0.25, 0.25]}}
    assert general_payload(result(scores={"a": 0.5, "group": 0.4})) is None  # a group: lm-eval's own combination
    assert general_payload(result(doc_weights={"a": [3.0, 4.0]})) is None  # a perplexity
    assert general_payload(None) is None
    prior = {"rung": 0, "rows": {}, "general": {"a": {"values": [1.0], "chance": None}}, "has_tasks": True}
    assert can_join(prior, [4], {"a": [7]})
    assert not can_join(prior, [], {"a": [7]})  # the rung adds no record
    assert not can_join(prior, [4], {"a": []})  # nor a document of a task
    assert not can_join({**prior, "general": None}, [4], {"a": [7]})
    assert can_join({"rung": 0, "rows": {}, "general": None, "has_tasks": False}, [4], {})


def test_the_sign_test_minimum_raises_small_rungs_and_skips_those_that_cannot_give_evidence():
    assert [min_sign_items(e) for e in (0.5, 0.1, 0.05, 0.03, 0.01)] == [1, 4, 5, 6, 7]
    assert rung_sizes(25, 3, 3.0) == [3, 9, 25] and rung_sizes(25, 3, 3.0, min_items=5) == [5, 9, 25]
    # The benchmark's world: 25 edits, 400 documents; rung 0 raised from 3 to 5 records.
    plan = plan_rungs(25, {"t": 400}, 3, 3.0, seed=0, min_items=5)
    assert [len(r) for r in plan.edit_records] == [5, 9, 25] and plan.skipped == () and plan.evaluated() == [0, 1, 2]
    assert set(plan.records(0)) < set(plan.records(1))  # still nested
    assert plan.records(1) == plan_rungs(25, {"t": 400}, 3, 3.0, seed=0).records(1)  # the same permutation
    assert "raised from 3" in plan.describe()[0] and "skipped" not in " ".join(plan.describe())
    # Raised to the rung above in every list: the same items, skipped.
    same = plan_rungs(9, {"t": 18}, 3, 3.0, seed=0, min_items=6)
    assert same.skipped == (0,) and "same items as rung 1" in same.describe()[0]
    # Fewer records than the sign test needs in the whole edit set: skipped.
    assert plan_rungs(4, {"t": 400}, 3, 3.0, seed=0, min_items=5).skipped == (0, 1)
    # Fewer documents than that: all of them at every rung (exact there), the records sampled.
    few = plan_rungs(30, {"a": 2, "b": 2}, 3, 3.0, seed=0, min_items=5)
    assert few.skipped == () and [len(r) for r in few.edit_records] == [5, 10, 30]
    assert few.general_samples(0) == {"a": [0, 1], "b": [0, 1]} == few.general_samples(1)
    assert "every document of a, b: exact there" in few.describe()[0]
    assert plan_rungs(30, {"a": 2, "b": 3}, 3, 3.0, seed=0, min_items=5).skipped == ()
    assert plan_rungs(30, {}, 3, 3.0, seed=0, min_items=5).skipped == ()  # no tasks: records only
    assert "fewer than 5" in plan_rungs(4, {}, 2, 3.0, seed=0, min_items=5).describe()[0]


def test_with_reuse_nothing_pruned_costs_the_full_evaluation():
    assert halving_cost(5, 3, 3.0) == pytest.approx((5 / 9 + 2 * 2 / 9 + 2 / 3, 5))
    assert halving_cost(5, 3, 3.0, reuse=False) == pytest.approx((5 / 9 + 2 / 3 + 1, 5 * 13 / 9))
    assert halving_cost(5, 2, 3.0, fractions=[0.2, 1.0]) == pytest.approx((5 * 0.2 + 2 * 0.8, 5))


def test_the_trial_skips_the_rungs_its_plan_skips_and_pays_each_item_once(evaluators, monkeypatch):
    from mm4ke_ray.config import SearchConfig
    from mm4ke_ray.search import trial, trial_candidates

    plain, _, common = evaluators
    # 9 records, 18 documents: raised to 6 items, rung 0 would score what rung 1 does (skipped).
    settings = EvalSettings(**common, fidelity_rungs=3, fidelity_reduction_factor=3.0, fidelity_seed=5,
                            fidelity_min_items=6)
    evaluator = CandidateEvaluator(settings, reference=plain.reference)
    assert evaluator.rung_plan().skipped == (0,)
    calls = []

    def evaluate(*args):
        calls.append(args[4:5])
        return evaluator.evaluate(*args)

    actor = types.SimpleNamespace(evaluate=types.SimpleNamespace(remote=evaluate),
                                  rung_plan=types.SimpleNamespace(remote=evaluator.rung_plan))
    monkeypatch.setattr(trial_candidates, "ray", types.SimpleNamespace(get=lambda x: x))
    ctx = trial.TrialContext(settings=settings, search=SearchConfig(seed=7, space={"alpha": {"low": 0.0, "high": 0.95}}),
                             extra_candidates=2, runner="task", rsft_cpus=1, rsft_gpus=0, storage_path="unused",
                             actors=(actor,), fidelity_error_rate=0.05)
    cands = [{"kind": "sampled", "alpha": 0.5, "sparsity": 0.0}, {"kind": "extra", "alpha": 0.0, "sparsity": 0.0},
             {"kind": "extra", "alpha": 0.9, "sparsity": 0.5}]
    delta = _delta(evaluator.model, 2, 3)
    full, pruned, compute = trial_candidates._evaluate_candidates(ctx, cands, delta, "t1")
    assert (0,) not in calls and calls.count((1,)) == 3  # rung 0 never evaluated
    plan = evaluator.rung_plan()
    for c in full + pruned:
        m, r = c["metrics"], c["metrics"]["fidelity.rung"]
        assert m["fidelity.skipped_rungs"] == 1 and [k for k in m if k.startswith("rung0.")] == ["rung0.skipped"]
        # each item once: a candidate's records and documents are those of the highest rung it reached
        assert (m["compute.records"], m["compute.docs"]) == (len(plan.records(r)),
                                                             sum(len(d[r]) for d in plan.general_docs.values()))
    for c in full:
        assert c["metrics"]["compute.reused_records"] == 6 and c["metrics"]["rung1.eval_records"] == 6
        direct = plain.evaluate(delta, c["alpha"], c["sparsity"], seed=7)
        _same({k: v for k, v in c["metrics"].items() if not k.startswith(("compute.", "fidelity.", "rung"))}, direct)
    assert compute["eval_compute_records"] == sum(c["metrics"]["compute.records"] for c in full + pruned)


def test_a_halving_sweep_records_the_minimum_rung_size_and_the_reuse():
    from pathlib import Path

    from mm4ke_ray.config import load_config
    from mm4ke_ray.tracking.sweep_run import recorded_choices

    demo = Path(__file__).parent.parent / "search_spaces" / "demo.yaml"
    on = load_config(demo).with_overrides(**{"evaluation.fidelity.enabled": True, "merge.extra_candidates": 4,
                                                     "evaluation.fidelity.error_rate": 0.1})
    got = recorded_choices(on)
    assert got["fidelity_min_items"] == 4 and "next rung adds" in got["fidelity_reuse"]
    assert "fidelity_min_items" not in recorded_choices(load_config(demo))  # halving off: nothing said
