"""Successive-halving groundwork (mm4ke_ray/evaluate/fidelity.py): rung subsets, margin promotion,
rung standard errors, and the off-by-default config. Pure Python: no Ray, no model."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest
from conftest import ZSRE

from mm4ke_ray.config import EvaluationConfig, FidelityConfig, load_config
from mm4ke_ray.errors import ConfigError
from mm4ke_ray.evaluate.fidelity import (
    RungItems,
    RungResult,
    beaten_by_exact,
    difference_stderrs,
    dominates_by_margin,
    edit_score_stderr,
    mean_stderr,
    nested_subsets,
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


def test_dominated_by_less_than_the_margin_is_promoted_by_more_is_not():
    # margin = z * sqrt(0.05^2 + 0.05^2) = 2 * 0.0707 = 0.141 per objective.
    best = _point("best", 0.80, 0.60)
    close = _point("close", 0.70, 0.50)  # 0.10 behind in both: within the margin
    far = _point("far", 0.55, 0.35)  # 0.25 behind in both: beyond it
    assert not dominates_by_margin(best, close, z=2.0)
    assert dominates_by_margin(best, far, z=2.0)
    assert promote([best, close, far], reduction_factor=3.0, z=2.0) == ["best", "close"]
    # With no margin, plain (strict in both) dominance drops both; the minimum ceil(3/3)=1 holds.
    assert promote([best, close, far], reduction_factor=3.0, z=0.0) == ["best"]


def test_a_tie_in_one_objective_drops_only_without_a_margin_to_clear():
    # Retention capped at 1 for both, edit far apart: worse in one, tied in the other.
    capped = RungResult("capped", 0.9, 1.0, edit_se=0.01, general_se=0.0)
    behind = RungResult("behind", 0.5, 1.0, edit_se=0.01, general_se=0.0)
    assert dominates_by_margin(capped, behind, z=1.0)  # the tie has no error: 0 >= a margin of 0
    assert not dominates_by_margin(behind, capped, z=1.0)
    assert not dominates_by_margin(capped, capped, z=0.0)  # identical points: neither dominates
    noisy = RungResult("noisy", 0.5, 1.0, edit_se=0.01, general_se=0.05)
    assert not dominates_by_margin(capped, noisy, z=1.0)  # a tie does not clear a positive margin
    assert dominates_by_margin(capped, noisy, z=0.0)


def _with_items(key, edit_items, doc_items, docs_population=30):
    """A rung result whose objectives are the means of its items, with unpaired SEs of those."""
    edit, general = statistics.fmean(edit_items), min(1.0, statistics.fmean(doc_items))
    items = RungItems(tuple(edit_items), 27, {"task": tuple(doc_items)}, {"task": docs_population})
    return RungResult(key, edit, general, edit_se=mean_stderr(edit_items, 27),
                      general_se=mean_stderr(doc_items, docs_population), items=items)


def test_paired_items_drop_a_candidate_the_unpaired_margin_keeps():
    # Two merges of one delta on the same 9 records and 10 documents: the documents are answered
    # alike (retention ties exactly), and b is ahead on 4 records and behind on none. Spread
    # across records is wide (hard and easy ones), so the unpaired SE hides b's lead.
    docs = [1.4, 0.0, 1.4, 1.4, 0.0, 1.4, 1.4, 0.0, 1.4, 1.4]  # acc 0/1 over a base score of 0.7
    a_edit = [0.0, 0.1, 0.9, 1.0, 0.2, 0.8, 0.0, 1.0, 0.5]
    b_edit = [0.5, 0.6, 0.9, 1.0, 0.7, 0.8, 0.5, 1.0, 0.5]
    a, b = _with_items("a", a_edit, docs), _with_items("b", b_edit, docs)
    paired_edit, paired_general = difference_stderrs(b, a)
    assert paired_general == 0.0  # identical per-document values: the difference is exactly 0
    assert paired_edit == pytest.approx(mean_stderr([0.5, 0.5, 0, 0, 0.5, 0, 0.5, 0, 0], 27))
    unpaired = [RungResult(r.key, *r.values(), *r.stderrs()) for r in (a, b)]  # the same without items
    assert difference_stderrs(unpaired[1], unpaired[0])[0] > 1.5 * paired_edit
    # b - a = 0.222 in edit: 3.0 paired SEs (0.073), 1.7 unpaired ones (0.134); 0 in general.
    assert dominates_by_margin(b, a, z=2.0)
    assert not dominates_by_margin(*reversed(unpaired), z=2.0)
    assert promote([a, b], reduction_factor=3.0, z=2.0) == ["b"]
    assert promote(unpaired, reduction_factor=3.0, z=2.0) == ["a", "b"]


def test_items_that_do_not_line_up_fall_back_to_the_unpaired_margin():
    a = _with_items("a", [0.0, 0.5, 1.0], [1.0, 0.0])
    b = _with_items("b", [0.5, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0])  # another rung's items
    plain = math.hypot(a.edit_se, b.edit_se), math.hypot(a.general_se, b.general_se)
    assert difference_stderrs(b, a) == pytest.approx(plain)
    no_docs = RungResult("c", 0.9, 0.5, 0.1, 0.1, RungItems((1.0, 1.0, 0.5), 27, None, None))
    edit_se, general_se = difference_stderrs(no_docs, a)
    assert edit_se == pytest.approx(mean_stderr([1.0, 0.5, -0.5], 27))  # records pair
    assert general_se == pytest.approx(math.hypot(0.1, a.general_se))  # documents do not
    assert RungItems.from_dict(a.items.to_dict()) == a.items  # the JSON form round-trips


def test_an_exact_front_point_beats_a_rung_estimate_by_its_own_standard_errors():
    a = RungResult("a", 0.50, 0.90, edit_se=0.05, general_se=0.04)
    assert beaten_by_exact(a, (0.65, 0.99), z=2.0)  # 3 of a's SEs ahead in edit, 2.25 in general
    assert not beaten_by_exact(a, (0.65, 0.93), z=2.0)  # 0.03 < 2 x 0.04 in general: could be noise
    assert not beaten_by_exact(a, (0.58, 1.00), z=2.0)  # 0.08 < 2 x 0.05 in edit
    # At the ceiling a cannot end above the point: no margin asked there, only in the other.
    capped = RungResult("c", 0.50, 1.00, edit_se=0.05, general_se=0.04)
    assert beaten_by_exact(capped, (0.61, 1.00), z=2.0) and not beaten_by_exact(capped, (0.59, 1.00), z=2.0)
    assert not beaten_by_exact(capped, (0.50, 1.00), z=2.0)  # equal: nothing strictly better
    assert not beaten_by_exact(RungResult("u", 0.1, 0.1, None, 0.01), (0.9, 0.9), z=1.0)  # unknown SE protects


def test_candidates_the_front_beats_are_dropped_and_do_not_fill_the_minimum():
    good = _point("good", 0.80, 0.90, se=0.02)
    weak = _point("weak", 0.40, 0.90, se=0.02)
    weaker = _point("weaker", 0.30, 0.85, se=0.02)
    # Within the trial: weak and weaker are dominated by good, but the minimum ceil(3/2) = 2 keeps weak.
    assert promote([good, weak, weaker], reduction_factor=2.0, z=1.0) == ["good", "weak"]
    # The sweep already has (0.7, 1.0) in full: weak and weaker are beaten, and no minimum saves them.
    assert promote([good, weak, weaker], reduction_factor=2.0, z=1.0, front=[(0.7, 1.0)]) == ["good"]
    # A front that beats everyone leaves nobody (the sweep keeps its sampled candidate itself).
    assert promote([good, weak], reduction_factor=2.0, z=1.0, front=[(0.95, 1.0)]) == []


def test_far_behind_in_one_objective_only_is_a_trade_off_and_goes_on():
    edit_heavy = _point("edit", 0.95, 0.20)
    general_heavy = _point("general", 0.30, 0.70)
    assert promote([edit_heavy, general_heavy], reduction_factor=2.0, z=1.0) == ["edit", "general"]


def test_the_minimum_is_filled_by_fewest_dominators_then_pareto_rank():
    # One outlier dominates all others by far; ceil(5/2)=3 must go on.
    top = _point("top", 0.99, 0.99, se=0.01)
    a = _point("a", 0.50, 0.50, se=0.01)  # dominated by top only
    b = _point("b", 0.40, 0.45, se=0.01)  # by top and a
    c = _point("c", 0.45, 0.40, se=0.01)  # by top and a
    d = _point("d", 0.10, 0.10, se=0.01)  # by everyone
    kept = promote([d, c, b, a, top], reduction_factor=2.0, z=1.0)
    # b and c tie on dominator count and Pareto rank: the earlier in the input wins (c here).
    assert kept == ["c", "a", "top"]
    assert promote([d, b, c, a, top], reduction_factor=2.0, z=1.0) == ["b", "a", "top"]


def test_all_non_dominated_go_on_even_above_the_minimum():
    front = [_point(f"p{i}", 0.1 * i, 1 - 0.1 * i) for i in range(6)]
    assert promote(front, reduction_factor=3.0, z=1.0) == [p.key for p in front]


def test_an_unknown_standard_error_drops_nothing_unless_z_is_0():
    strong = RungResult("strong", 0.9, 0.9, edit_se=None, general_se=0.01)
    weak = RungResult("weak", 0.1, 0.1, edit_se=0.01, general_se=0.01)
    assert not dominates_by_margin(strong, weak, z=1.0)
    assert promote([strong, weak], reduction_factor=10.0, z=1.0) == ["strong", "weak"]
    assert promote([strong, weak], reduction_factor=10.0, z=0.0) == ["strong"]


def test_promotion_refuses_bad_arguments():
    with pytest.raises(ValueError, match="duplicate"):
        promote([_point("x", 0.1, 0.1), _point("x", 0.2, 0.2)], 2.0, 1.0)
    with pytest.raises(ValueError, match="reduction_factor"):
        promote([], 1.0, 1.0)
    assert promote([], 2.0, 1.0) == []


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
    ok = FidelityConfig(rungs=1, reduction_factor=1.5, margin_z=0)
    assert ok.rungs == 1


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
])
def test_bad_fidelity_fields_are_named(tmp_path, field, value, fragment):
    config = tmp_path / "c.yaml"
    config.write_text(f"evaluation:\n  fidelity:\n    enabled: true\n    {field}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert f"evaluation.fidelity.{field}" in str(err.value) and fragment in str(err.value)
