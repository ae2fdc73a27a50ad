"""Successive-halving groundwork (mm4ke_ray/evaluate/fidelity.py, evidence.py): rung subsets,
promotion on evidence, rung standard errors, and the off-by-default config. Pure Python: no Ray,
no model."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest
from conftest import ZSRE

from mm4ke_ray.config import EvaluationConfig, FidelityConfig, load_config
from mm4ke_ray.errors import ConfigError, UserError
from mm4ke_ray.evaluate.evidence import (
    check_halving_evidence,
    jeffreys_floor,
    sign_test_pvalue,
    z_error_rate,
    z_for,
)
from mm4ke_ray.evaluate.fidelity import (
    RungItems,
    RungResult,
    beaten_by_exact,
    dominates_beyond_doubt,
    edit_score_stderr,
    general_exact,
    mean_stderr,
    nested_subsets,
    paired_stderrs,
    plan_rungs,
    promote,
    rung_fractions,
    rung_sizes,
)

# -- rung subsets -------------------------------------------------------------------------------


def test_rung_fractions_follow_the_reduction_factor():
    assert rung_fractions(3, 3.0) == pytest.approx([1 / 9, 1 / 3, 1.0])
    assert rung_fractions(1, 2.0) == [1.0]
    assert rung_sizes(90, 3, 3.0) == [10, 30, 90]
    assert rung_sizes(4, 3, 3.0) == [1, 2, 4]  # ceil, at least one record


def test_subsets_are_nested_seeded_and_cover_the_full_set():
    records = len(json.loads(ZSRE.read_text()))  # the real sample edit set's size
    subsets = nested_subsets(records, 3, 2.0, seed=7, key="edits")
    assert [len(s) for s in subsets] == rung_sizes(records, 3, 2.0)
    for small, big in zip(subsets, subsets[1:], strict=False):
        assert set(small) <= set(big)
    assert subsets[-1] == list(range(records))
    assert subsets == nested_subsets(records, 3, 2.0, seed=7, key="edits")  # deterministic
    assert subsets[0] != nested_subsets(records, 3, 2.0, seed=8, key="edits")[0]  # the seed matters
    assert subsets[0] != nested_subsets(records, 3, 2.0, seed=7, key="other")[0]  # so does the key
    assert subsets[0] != list(range(len(subsets[0])))  # a sample, not the first records


def test_subsets_repeat_in_another_process():
    code = "from mm4ke_ray.evaluate.fidelity import nested_subsets as n; print(n(200, 3, 3.0, 5, 'edits'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out) == nested_subsets(200, 3, 3.0, 5, "edits")


def test_plan_covers_records_and_each_task_and_marks_the_full_rung():
    plan = plan_rungs(30, {"arc_easy": 100, "hellaswag": 100}, rungs=2, reduction_factor=4.0, seed=0)
    assert len(plan.records(0)) == 8 and plan.records(1) == list(range(30))
    samples = plan.general_samples(0)
    assert sorted(samples) == ["arc_easy", "hellaswag"] and all(len(v) == 25 for v in samples.values())
    assert samples["arc_easy"] != samples["hellaswag"]  # independent draws per task
    assert [plan.is_full(r) for r in range(2)] == [False, True]
    with pytest.raises(ValueError, match="rung 2 out of range"):
        plan.records(2)


# -- promotion ----------------------------------------------------------------------------------


def _point(key, edit, general, se=0.05):
    return RungResult(key, edit, general, edit_se=se, general_se=se)


Z1, Z2 = z_error_rate(1.0), z_error_rate(2.0)  # the error rates of the old margins z 1 and z 2


def test_evidence_primitives_on_known_numbers():
    assert z_for(0.05) == pytest.approx(1.6449, abs=1e-4) and z_for(0.5) == 0.0
    assert z_error_rate(1.0) == pytest.approx(0.1587, abs=1e-4)
    assert sign_test_pvalue(0, 0) == 1.0  # no discordant item: no evidence at all
    assert sign_test_pvalue(1, 0) == 0.5 and sign_test_pvalue(5, 0) == 1 / 32
    assert sign_test_pvalue(6, 1) == pytest.approx(8 / 128)  # P(X >= 6), X ~ Bin(7, 1/2)
    assert jeffreys_floor([1.0] * 9, 27) > 0  # all items alike: still the doubt of 9 items
    assert jeffreys_floor([0.5], 27) == math.inf and jeffreys_floor([1.0] * 9, 9) == 0.0
    for bad in (0.0, 0.6):
        with pytest.raises(ValueError, match="error_rate"):
            z_for(bad)


def test_dominated_by_less_than_the_margin_is_promoted_by_more_is_not():
    # Unpaired (no items): margin = z * sqrt(0.05^2 + 0.05^2) = 2 * 0.0707 = 0.141 per objective.
    best = _point("best", 0.80, 0.60)
    close = _point("close", 0.70, 0.50)  # 0.10 behind in both: within the margin
    far = _point("far", 0.55, 0.35)  # 0.25 behind in both: beyond it
    assert not dominates_beyond_doubt(best, close, Z2)
    assert dominates_beyond_doubt(best, far, Z2)
    assert promote([best, close, far], reduction_factor=3.0, error_rate=Z2) == ["best", "close"]
    # At error rate 0.5 (z 0) any lead in both objectives is enough; the minimum ceil(3/3)=1 holds.
    assert promote([best, close, far], reduction_factor=3.0, error_rate=0.5) == ["best"]


def test_a_tie_is_no_evidence_even_with_no_error():
    # Retention capped at 1 for both, edit far apart: worse in one, tied in the other. A tie says
    # nothing about the documents not yet seen, so it never counts as "at least as good".
    capped = RungResult("capped", 0.9, 1.0, edit_se=0.01, general_se=0.0)
    behind = RungResult("behind", 0.5, 1.0, edit_se=0.01, general_se=0.0)
    for rate in (Z1, 0.5):
        assert not dominates_beyond_doubt(capped, behind, rate)
    assert dominates_beyond_doubt(capped, RungResult("worse", 0.5, 0.9, 0.01, 0.01), Z1)
    assert not dominates_beyond_doubt(capped, capped, 0.5)  # identical points: neither dominates


def _with_items(key, edit_items, doc_items, docs_population=30):
    """A rung result whose objectives are the means of its items, with unpaired SEs of those."""
    edit, general = statistics.fmean(edit_items), min(1.0, statistics.fmean(doc_items))
    items = RungItems(tuple(edit_items), 27, {"task": tuple(doc_items)}, {"task": docs_population})
    return RungResult(key, edit, general, edit_se=mean_stderr(edit_items, 27),
                      general_se=mean_stderr(doc_items, docs_population), items=items)


def test_identical_items_or_one_differing_document_is_no_evidence():
    # Issue 23: two merges that answer all 23 documents of a small rung alike get a paired SE of
    # 0, and one differing document in 23 cleared z 1. Neither may drop a candidate now.
    a_edit = [0.0, 0.1, 0.9, 1.0, 0.2, 0.8, 0.0, 1.0, 0.5] * 2
    b_edit = [x + 0.5 if x <= 0.5 else x for x in a_edit]  # ahead on most records, behind on none
    docs = [1.4, 0.0] * 11 + [0.0]  # acc 0/1 over a base score of 0.7, 23 documents
    a = _with_items("a", a_edit, docs, 200)
    assert not dominates_beyond_doubt(_with_items("b", b_edit, docs, 200), a, 0.5)
    one_better = docs[:-1] + [1.4]
    b = _with_items("b", b_edit, one_better, 200)
    assert paired_stderrs(b.items, a.items)[1] > 0  # the old test: 1/23 over its SE is 1 (z 1 met)
    assert not dominates_beyond_doubt(b, a, Z1) and not dominates_beyond_doubt(b, a, 0.2)
    six_better = [1.4] * 6 + docs[6:]  # six of the zeros of the first documents answered right
    b6 = _with_items("b", b_edit, [1.4 if i % 2 else v for i, v in enumerate(six_better)], 200)
    assert dominates_beyond_doubt(b6, a, 0.05)  # enough discordant items, all one way


def test_a_general_score_of_every_document_is_exact_so_as_good_there_suffices():
    # WikiText-2 cut to 2 articles: every rung scores both (rung_plan), so the rung's general
    # score is the full one. b leads a on 6 of 9 records, behind on none.
    a_edit = [0.0, 0.1, 0.9, 1.0, 0.2, 0.8, 0.0, 1.0, 0.5]
    b_edit = [x + 0.5 if x <= 0.5 else x for x in a_edit]
    a = _with_items("a", a_edit, [0.95, 1.0], docs_population=2)
    assert general_exact(a.items) and not general_exact(_with_items("s", a_edit, [0.95, 1.0], 30).items)
    assert dominates_beyond_doubt(_with_items("b", b_edit, [0.95, 1.0], 2), a, 0.05)  # tied, exactly
    assert dominates_beyond_doubt(_with_items("b", b_edit, [0.96, 1.0], 2), a, 0.05)
    assert not dominates_beyond_doubt(_with_items("b", b_edit, [0.94, 1.0], 2), a, 0.05)  # a trade-off
    # The same two documents as a sample of 30: a tie there is no evidence (as before).
    sampled = _with_items("a", a_edit, [0.95, 1.0], docs_population=30)
    assert not dominates_beyond_doubt(_with_items("b", b_edit, [0.95, 1.0], 30), sampled, 0.05)
    # Against an exact front point: at least as good in the exact objective, ahead beyond doubt in
    # the other.
    assert beaten_by_exact(a, (0.95, a.general), 0.05)
    assert not beaten_by_exact(a, (0.95, a.general - 0.001), 0.05)
    assert not beaten_by_exact(sampled, (0.95, sampled.general), 0.05)
    assert not beaten_by_exact(a, (a.edit + 0.01, a.general + 0.01), 0.05)  # edit: not beyond doubt


def test_paired_items_drop_a_candidate_the_unpaired_test_keeps():
    # Two merges of one delta on the same 18 records and 20 documents: b is ahead on 8 records and
    # 7 documents, behind on none. Spread across items is wide (hard and easy ones), so the
    # unpaired SE hides b's lead; the paired one (and the sign test) shows it.
    a_edit = [0.0, 0.1, 0.9, 1.0, 0.2, 0.8, 0.0, 1.0, 0.5] * 2
    b_edit = [x + 0.2 if x <= 0.2 else x for x in a_edit]
    a_docs = [1.4, 0.0] * 10  # acc 0/1 over a base score of 0.7
    b_docs = [1.4] * 14 + a_docs[14:]
    a, b = _with_items("a", a_edit, a_docs), _with_items("b", b_edit, b_docs)
    unpaired = [RungResult(r.key, *r.values(), *r.stderrs()) for r in (a, b)]  # the same without items
    assert dominates_beyond_doubt(b, a, Z2)
    assert not dominates_beyond_doubt(*reversed(unpaired), Z2)
    assert promote([a, b], reduction_factor=3.0, error_rate=Z2) == ["b"]
    assert promote(unpaired, reduction_factor=3.0, error_rate=Z2) == ["a", "b"]


def test_a_few_large_losses_are_not_outvoted_by_many_small_wins():
    a_edit = [0.5] * 20
    b_edit = [0.55] * 15 + [0.0] * 5  # ahead on 15 records by 0.05, behind on 5 by 0.5
    docs = [1.0] * 10
    a, b = _with_items("a", a_edit, docs), _with_items("b", b_edit, [2.0] * 10)
    assert sign_test_pvalue(15, 5) < 0.05  # the signs alone would say b is better in edit
    assert not dominates_beyond_doubt(b, a, 0.05)  # its mean is lower: the z test refuses


def test_items_that_do_not_line_up_fall_back_to_the_unpaired_test():
    a = _with_items("a", [0.0, 0.5, 1.0], [1.0, 0.0])
    b = _with_items("b", [0.5, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0])  # another rung's items
    bare = [RungResult(r.key, *r.values(), *r.stderrs()) for r in (a, b)]
    for rate in (Z1, 0.3, 0.5):
        assert dominates_beyond_doubt(b, a, rate) == dominates_beyond_doubt(bare[1], bare[0], rate)
    assert RungItems.from_dict(a.items.to_dict()) == a.items  # the JSON form round-trips


def test_an_exact_front_point_beats_a_rung_estimate_by_its_own_standard_errors():
    a = RungResult("a", 0.50, 0.90, edit_se=0.05, general_se=0.04)
    assert beaten_by_exact(a, (0.65, 0.99), Z2)  # 3 of a's SEs ahead in edit, 2.25 in general
    assert not beaten_by_exact(a, (0.65, 0.93), Z2)  # 0.03 < 2 x 0.04 in general: could be noise
    assert not beaten_by_exact(a, (0.58, 1.00), Z2)  # 0.08 < 2 x 0.05 in edit
    # At the ceiling a cannot end above the point: no margin asked there, only in the other.
    capped = RungResult("c", 0.50, 1.00, edit_se=0.05, general_se=0.04)
    assert beaten_by_exact(capped, (0.61, 1.00), Z2) and not beaten_by_exact(capped, (0.59, 1.00), Z2)
    assert not beaten_by_exact(capped, (0.50, 1.00), Z2)  # equal: nothing strictly better
    assert not beaten_by_exact(RungResult("u", 0.1, 0.1, None, 0.01), (0.9, 0.9), Z1)  # unknown SE protects


def test_an_estimate_whose_items_all_agree_keeps_the_doubt_of_its_few_items():
    # Nine records all at 0.2: SE 0, so any point ahead would have beaten it; the Jeffreys floor
    # asks for a lead beyond the doubt of 9 items.
    a = _with_items("a", [0.2] * 9, [1.0, 1.0, 1.0])
    assert a.edit_se == 0.0
    assert not beaten_by_exact(a, (0.3, 1.0), Z1)
    assert beaten_by_exact(a, (0.9, 1.0), Z1)


def test_candidates_the_front_beats_are_dropped_and_do_not_fill_the_minimum():
    good = _point("good", 0.80, 0.90, se=0.02)
    weak = _point("weak", 0.40, 0.90, se=0.02)
    weaker = _point("weaker", 0.30, 0.85, se=0.02)
    # Within the trial: weaker is dominated; weak ties good in general (no evidence) and goes on.
    assert promote([good, weak, weaker], reduction_factor=2.0, error_rate=Z1) == ["good", "weak"]
    # The sweep already has (0.7, 1.0) in full: weak and weaker are beaten, and no minimum saves them.
    assert promote([good, weak, weaker], reduction_factor=2.0, error_rate=Z1, front=[(0.7, 1.0)]) == ["good"]
    # A front that beats everyone leaves nobody (the sweep keeps its sampled candidate itself).
    assert promote([good, weak], reduction_factor=2.0, error_rate=Z1, front=[(0.95, 1.0)]) == []


def test_far_behind_in_one_objective_only_is_a_trade_off_and_goes_on():
    edit_heavy = _point("edit", 0.95, 0.20)
    general_heavy = _point("general", 0.30, 0.70)
    assert promote([edit_heavy, general_heavy], reduction_factor=2.0, error_rate=Z1) == ["edit", "general"]


def test_the_minimum_is_filled_by_fewest_dominators_then_pareto_rank():
    # One outlier dominates all others by far; ceil(5/2)=3 must go on.
    top = _point("top", 0.99, 0.99, se=0.01)
    a = _point("a", 0.50, 0.50, se=0.01)  # dominated by top only
    b = _point("b", 0.40, 0.45, se=0.01)  # by top and a
    c = _point("c", 0.45, 0.40, se=0.01)  # by top and a
    d = _point("d", 0.10, 0.10, se=0.01)  # by everyone
    kept = promote([d, c, b, a, top], reduction_factor=2.0, error_rate=Z1)
    # b and c tie on dominator count and Pareto rank: the earlier in the input wins (c here).
    assert kept == ["c", "a", "top"]
    assert promote([d, b, c, a, top], reduction_factor=2.0, error_rate=Z1) == ["b", "a", "top"]


def test_all_non_dominated_go_on_even_above_the_minimum():
    front = [_point(f"p{i}", 0.1 * i, 1 - 0.1 * i) for i in range(6)]
    assert promote(front, reduction_factor=3.0, error_rate=Z1) == [p.key for p in front]


def test_an_unknown_or_zero_standard_error_is_no_evidence():
    strong = RungResult("strong", 0.9, 0.9, edit_se=None, general_se=0.01)
    weak = RungResult("weak", 0.1, 0.1, edit_se=0.01, general_se=0.01)
    for rate in (Z1, 0.5):
        assert not dominates_beyond_doubt(strong, weak, rate)
        assert promote([strong, weak], reduction_factor=10.0, error_rate=rate) == ["strong", "weak"]
    exact = RungResult("exact", 0.9, 0.9, edit_se=0.0, general_se=0.0)
    assert not dominates_beyond_doubt(exact, RungResult("w", 0.1, 0.1, 0.0, 0.0), 0.5)


def test_halving_refuses_general_tasks_that_can_never_give_evidence():
    check_halving_evidence({"boolq": 0.02, "demo_facts": 0.05}, {})  # per-document accuracies: fine
    with pytest.raises(UserError) as err:
        check_halving_evidence({"boolq": 0.02, "squadv2": None, "wikitext": 0.3}, {"wikitext": False})
    assert "['squadv2', 'wikitext']" in str(err.value) and "evaluation.fidelity.enabled: false" in str(err.value)
    # Scored in full at every rung (fewer documents than the sign test needs): exact, no evidence needed.
    check_halving_evidence({"boolq": 0.02, "squadv2": None, "wikitext": 0.3}, {"wikitext": False},
                           exact=plan_rungs(25, {"boolq": 400, "squadv2": 3, "wikitext": 2}, 3, 3.0, seed=0,
                                            min_items=5).exact_tasks())


def test_promotion_refuses_bad_arguments():
    with pytest.raises(ValueError, match="duplicate"):
        promote([_point("x", 0.1, 0.1), _point("x", 0.2, 0.2)], 2.0, Z1)
    with pytest.raises(ValueError, match="reduction_factor"):
        promote([], 1.0, Z1)
    with pytest.raises(ValueError, match="error_rate"):
        promote([], 2.0, 1.0)
    assert promote([], 2.0, Z1) == []


# -- standard errors ----------------------------------------------------------------------------


def test_stderr_on_known_numbers():
    scores = [1.0, 0.0, 1.0, 1.0]  # mean 0.75, sample variance 0.25, SE = 0.5 / 2
    assert edit_score_stderr(scores) == pytest.approx(0.25)
    assert mean_stderr([0.2, 0.4, 0.6]) == pytest.approx(statistics.stdev([0.2, 0.4, 0.6]) / math.sqrt(3))
    assert edit_score_stderr([0.5]) is None
    # Finite-population correction: 4 of 9 records, sqrt((9-4)/(9-1)); at the full set it is 0.
    assert edit_score_stderr(scores, population=9) == pytest.approx(0.25 * math.sqrt(5 / 8))
    assert edit_score_stderr(scores, population=4) == 0.0
    with pytest.raises(ValueError, match="population"):
        edit_score_stderr(scores, population=3)


# -- config -------------------------------------------------------------------------------------


def test_fidelity_is_off_by_default_and_validated():
    assert EvaluationConfig().fidelity == FidelityConfig()
    assert EvaluationConfig().fidelity.enabled is False
    ok = FidelityConfig(rungs=1, reduction_factor=1.5, error_rate=0.5)
    assert ok.rungs == 1 and FidelityConfig().error_rate == 0.05


def test_an_old_margin_z_runs_as_its_error_rate_and_a_conflict_is_refused(tmp_path):
    # Sweeps logged before issue 23 store margin_z (their config.yaml, resume manifests): they still load.
    old = FidelityConfig(margin_z=1.0)
    assert old.error_rate == pytest.approx(z_error_rate(1.0)) and old.margin_z is None
    assert FidelityConfig(**old.model_dump()) == old  # the new dump loads back the same
    assert FidelityConfig(margin_z=2.0, error_rate=z_error_rate(2.0)).error_rate == pytest.approx(0.02275, abs=1e-5)
    config = tmp_path / "c.yaml"
    config.write_text("evaluation:\n  fidelity:\n    enabled: true\n    margin_z: 1.0\n    error_rate: 0.05\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "evaluation.fidelity" in str(err.value) and "give error_rate only" in str(err.value)


def test_enabling_halving_is_accepted_but_not_without_extra_candidates(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("evaluation:\n  fidelity:\n    enabled: true\n")
    assert load_config(config).evaluation.fidelity.enabled is True
    config.write_text("evaluation:\n  fidelity:\n    enabled: true\nmerge:\n  extra_candidates: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "evaluation.fidelity.enabled" in str(err.value) and "merge.extra_candidates" in str(err.value)
    config.write_text("evaluation:\n  fidelity:\n    enabled: true\n    rungs: 1\nmerge:\n  extra_candidates: 0\n")
    assert load_config(config).evaluation.fidelity.rungs == 1  # one rung: no halving, nothing wasted


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("rungs", 0, "greater than or equal to 1"),
    ("reduction_factor", 1.0, "greater than 1"),
    ("margin_z", -0.5, "greater than or equal to 0"),
    ("error_rate", 0, "greater than 0"),
    ("error_rate", 0.7, "less than or equal to 0.5"),
])
def test_bad_fidelity_fields_are_named(tmp_path, field, value, fragment):
    config = tmp_path / "c.yaml"
    config.write_text(f"evaluation:\n  fidelity:\n    enabled: true\n    {field}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert f"evaluation.fidelity.{field}" in str(err.value) and fragment in str(err.value)
