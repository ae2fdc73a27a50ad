"""A trial's rung loop (`fidelity.run_rungs`) on hand-made scores, and the general score's
standard error. Pure Python: no Ray, no model (the sweep test runs it for real)."""

from __future__ import annotations

import math

import pytest

from mm4ke_ray.evaluate.fidelity import (
    EDIT_SE,
    GENERAL_SE,
    RungResult,
    general_score_stderr,
    run_rungs,
    rung_result,
)


def _scorer(table: dict[int, dict[str, tuple[float, float]]], se: float, calls: list):
    """evaluate_at from a table: rung -> key -> (edit, general), every SE `se`."""
    def evaluate_at(rung, keys):
        calls.append((rung, list(keys)))
        return {k: RungResult(k, *table[rung][k], se, se) for k in keys}
    return evaluate_at


def test_dominated_candidates_stop_and_the_kept_one_always_goes_on():
    # Rung 0: "a" and "b" beat "c" and "d" by far; "d" (the sampled one here) is kept anyway.
    table = {0: {"a": (0.9, 0.9), "b": (0.8, 0.95), "c": (0.1, 0.1), "d": (0.2, 0.2)},
             1: {"a": (0.9, 0.9), "b": (0.1, 0.1), "d": (0.2, 0.2)},
             2: {"a": (0.88, 0.91), "d": (0.21, 0.2)}}
    calls = []
    history = run_rungs(["d", "a", "b", "c"], _scorer(table, 0.01, calls), 3, 2.0, 0.16, keep=["d"])
    assert calls == [(0, ["d", "a", "b", "c"]), (1, ["d", "a", "b"]), (2, ["d", "a"])]
    assert [sorted(h) for h in history] == [["a", "b", "c", "d"], ["a", "b", "d"], ["a", "d"]]
    assert history[-1]["a"].values() == (0.88, 0.91)  # the last rung's own scores


def test_noisy_rungs_drop_nothing():
    table = {0: {"a": (0.9, 0.9), "b": (0.1, 0.1)}, 1: {"a": (0.9, 0.9), "b": (0.1, 0.1)}}
    calls = []
    history = run_rungs(["a", "b"], _scorer(table, 1.0, calls), 2, 3.0, 0.16)  # SE 1: no evidence
    assert sorted(history[-1]) == ["a", "b"]
    unknown = run_rungs(["a", "b"], lambda r, ks: {k: RungResult(k, *table[r][k]) for k in ks}, 2, 3.0, 0.5)
    assert sorted(unknown[-1]) == ["a", "b"]  # unknown SEs: nothing is dropped on them


def test_the_minimum_fill_keeps_ceil_n_over_eta():
    # One candidate dominates all others beyond doubt, but ceil(4/2) = 2 go on: the one with the
    # fewest dominators fills up ("b": "a" only; "c": "a" and "b").
    table = {0: {"a": (0.9, 0.9), "b": (0.5, 0.4), "c": (0.4, 0.3), "d": (0.1, 0.1)},
             1: {k: (0.5, 0.5) for k in "abcd"}}
    history = run_rungs(list("abcd"), _scorer(table, 0.01, []), 2, 2.0, 0.05)
    assert sorted(history[-1]) == ["a", "b"]


def test_one_rung_is_the_full_evaluation_of_everyone():
    table = {0: {"a": (0.9, 0.9), "b": (0.1, 0.1)}}
    assert sorted(run_rungs(["a", "b"], _scorer(table, 0.01, []), 1, 3.0, 0.5)[-1]) == ["a", "b"]


def test_bad_calls_are_refused():
    table = {0: {"a": (0.9, 0.9)}}
    with pytest.raises(ValueError, match="not among"):
        run_rungs(["a"], _scorer(table, 0.0, []), 2, 3.0, 0.05, keep=["z"])
    with pytest.raises(ValueError, match="duplicate"):
        run_rungs(["a", "a"], _scorer(table, 0.0, []), 2, 3.0, 0.05)
    with pytest.raises(ValueError, match="no result"):
        run_rungs(["a"], lambda r, ks: {}, 2, 3.0, 0.05)
    with pytest.raises(ValueError, match="error_rate"):
        run_rungs(["a", "b"], _scorer({0: {"a": (0.9, 0.9), "b": (0.1, 0.1)}}, 0.01, []), 2, 3.0, 1.0)


def test_rung_result_reads_the_metrics_an_evaluation_returns():
    r = rung_result("c1", {"edit_score": 0.5, "general_score": 0.7, EDIT_SE: 0.1, "other": 3})
    assert r == RungResult("c1", 0.5, 0.7, 0.1, None)
    assert rung_result("c2", {"edit_score": 1, "general_score": 0, GENERAL_SE: 0.2}).general_se == 0.2


def test_general_score_stderr_divides_by_the_base_and_corrects_for_the_population():
    # Two tasks, base 0.5 and 0.25, SE 0.05 each, on 10 of 100 and all 10 of 10 documents.
    se = general_score_stderr({"a": 0.05, "b": 0.05}, {"a": 0.5, "b": 0.25}, {"a": 10, "b": 10}, {"a": 100, "b": 10})
    assert se == pytest.approx(math.sqrt((0.1 * math.sqrt(90 / 99)) ** 2 + 0.0) / 2)
    assert general_score_stderr({"a": None}, {"a": 0.5}, {"a": 3}, {"a": 9}) is None
    assert general_score_stderr({"a": 0.1}, {"a": 0.0}, {"a": 3}, {"a": 9}) is None  # no ratio to a 0 base
    # a perplexity (lower is better): retention b / c has SE (b / c) · se / c, c = b without a candidate
    assert general_score_stderr({"a": 0.1}, {"a": 2.0}, {"a": 3}, {"a": 9}, {"a": False}) == \
        pytest.approx(0.1 / 2.0 * math.sqrt(6 / 8))
