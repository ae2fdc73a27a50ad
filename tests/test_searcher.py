"""The searcher learns from every told merge candidate, with start-up counted in R-SFT runs.

Sampler contract tests in the manner of Optuna's own (optuna/testing/pytest_samplers.py: a study
given points with `add_trial(create_trial(...))`, then the sampler's next draws inspected), run
through the product's searcher (`CandidateAwareOptunaSearch`, called as Tune's controller calls
it: suggest, then on_trial_complete; no Ray cluster) on a toy objective over the demo space.
"""

from __future__ import annotations

import logging
import math
import random
import statistics

import optuna
import pytest

from mm4ke_ray.config import ObjectivesConfig, Param, SearchConfig
from mm4ke_ray.evaluate.pareto_front import feasible
from mm4ke_ray.search.constraints import constraint_values, minimums
from mm4ke_ray.search.searcher import EXTRA_ATTR, EXTRA_POINTS_KEY, CandidateAwareOptunaSearch
from mm4ke_ray.search.space import candidate_seed, draw, make_sampler, merge_candidates, split_space
from mm4ke_ray.search.startup import RSFTStartupSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The demo's space (search_spaces/demo.yaml).
DEMO_SPACE = {
    "threshold": {"low": 0.01, "high": 0.2, "log": True},
    "steps": {"low": 2, "high": 8},
    "epochs": {"low": 1, "high": 4},
    "lr": {"low": 1e-4, "high": 1e-3, "log": True},
    "layer": {"choices": [0, 1]},
    "alpha": {"low": 0.0, "high": 0.8},
    "sparsity": {"low": 0.0, "high": 0.8},
}
RSFT = ("threshold", "steps", "epochs", "lr", "layer")
OBJ = ["edit_score", "general_score"]


def flat(params: dict) -> tuple[float, float]:
    """A toy objective where the layer does not matter (the issue's measurement)."""
    edit = 1 - abs(math.log10(params["lr"]) + 3.5) - 0.5 * params["alpha"]
    general = 1 - 0.4 * (1 - params["alpha"]) * (1 - params["sparsity"])
    return edit, general


def towards(target_alpha: float):
    """A toy objective whose best α is `target_alpha` (for 'suggestions follow the told points')."""
    def f(params):
        d = abs(params["alpha"] - target_alpha)
        return 1 - d, 1 - d * d
    return f


def sweep(sampler: str, trials: int, objective=flat, *, extra: int = 4, tell_extra: bool = True, seed: int = 0,
          startup: int = 4, constraints: dict | None = None, extra_objective=None) -> CandidateAwareOptunaSearch:
    """A sweep's search as the driver runs it, with `objective` in place of R-SFT + evaluation."""
    search = SearchConfig(num_trials=trials, sampler=sampler, seed=seed, startup_trials=startup, space=DEMO_SPACE)
    searched, fixed = split_space(search)
    s = CandidateAwareOptunaSearch(space=searched, metric=OBJ, mode=["max", "max"],
                                   sampler=make_sampler(search, points_per_trial=extra + 1), constraints=constraints)
    extra_objective = extra_objective or objective
    for i in range(trials):
        tid = f"t{i}"
        params = {**fixed, **s.suggest(tid)}
        cands = merge_candidates(search, params["alpha"], params["sparsity"], extra, candidate_seed(seed, params))
        points = [{"params": {**params, "alpha": c["alpha"], "sparsity": c["sparsity"]}} for c in cands[1:]
                  if c["in_space"]]
        for p in points:
            p["values"] = list(extra_objective(p["params"]))
        e, g = objective(params)
        s.on_trial_complete(tid, {"edit_score": e, "general_score": g, "params": params,
                                  EXTRA_POINTS_KEY: points if tell_extra else []})
    return s


def suggested(s: CandidateAwareOptunaSearch) -> list[dict]:
    return [t.params for t in s.study.get_trials(deepcopy=False) if EXTRA_ATTR not in t.user_attrs]


# --- 1. start-up counted in R-SFT configurations -------------------------------------------------

def test_startup_rsft_params_do_not_depend_on_told_points():
    with_extra = suggested(sweep("tpe", 5))
    without = suggested(sweep("tpe", 5, tell_extra=False))
    for a, b in zip(with_extra[:4], without[:4], strict=True):
        assert {k: a[k] for k in RSFT} == {k: b[k] for k in RSFT}
    # The 5th R-SFT configuration is the model's: it sees 20 points in one case, 4 in the other.
    assert {k: with_extra[4][k] for k in RSFT} != {k: without[4][k] for k in RSFT}


def test_startup_counts_suggested_trials_not_points():
    s = sweep("tpe", 3)
    sampler = s.study.sampler
    assert isinstance(sampler, RSFTStartupSampler)
    assert len(s.study.trials) == 3 * 5  # each trial told its 4 extra points
    nxt = s.study.ask()
    assert sampler.in_startup(s.study, nxt)  # 3 R-SFT configurations drawn, 4 in the start-up


def merge_only(params: dict) -> tuple[float, float]:
    """A toy objective where no R-SFT parameter matters, only α and sparsity."""
    return 1 - 0.5 * params["alpha"], 1 - 0.4 * (1 - params["alpha"]) * (1 - params["sparsity"])


def test_demo_space_exploration_does_not_collapse_onto_trial_one():
    # The issue's measurement: before, all 8 trials reused trial 1's layer in 10 of 10 seeds and
    # the spread of log10(lr) fell from 0.27 to 0.19 (uniform over a decade: 0.29).
    same_layer, spreads = 0, []
    for seed in range(10):
        params = suggested(sweep("tpe", 8, merge_only, seed=seed))
        same_layer += all(p["layer"] == params[0]["layer"] for p in params)
        spreads.append(statistics.pstdev(math.log10(p["lr"]) for p in params))
        assert len({p["lr"] for p in params}) == 8
    assert same_layer <= 3
    assert statistics.median(spreads) > 0.2


def test_searcher_with_the_startup_sampler_survives_save_and_restore(tmp_path):
    # Tune pickles the searcher (sampler included) into its experiment state for a driver restart.
    s = sweep("tpe", 5)
    s.save(str(tmp_path / "searcher.pkl"))
    search = SearchConfig(num_trials=6, sampler="tpe", space=DEMO_SPACE)
    restored = CandidateAwareOptunaSearch(space=split_space(search)[0], metric=OBJ, mode=["max", "max"],
                                          sampler=make_sampler(search))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert isinstance(restored.study.sampler, RSFTStartupSampler)
    assert len(restored.study.trials) == 25 and restored.suggest("t5")


# --- 2. every sampler learns from the told points ------------------------------------------------

@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_next_suggestions_depend_on_told_points(sampler):
    told = suggested(sweep(sampler, 6, startup=2))
    not_told = suggested(sweep(sampler, 6, startup=2, tell_extra=False))
    assert [{k: p[k] for k in RSFT} for p in told[:2]] == [{k: p[k] for k in RSFT} for p in not_told[:2]]
    assert told[2:] != not_told[2:]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_suggestions_follow_what_the_told_points_say(sampler):
    # The sampled points say nothing (a constant); only the extra points say where α is good.
    def constant(_params):
        return 0.5, 0.5

    high, low = [], []
    for seed in range(1 if sampler == "gp" else 3):  # GP fits a surrogate per draw: slow, and steady
        for target, out in ((0.8, high), (0.0, low)):
            s = sweep(sampler, 8, constant, seed=seed, startup=2, extra_objective=towards(target))
            out += [p["alpha"] for p in suggested(s)[2:]]
    assert statistics.mean(high) > statistics.mean(low) + 0.15


def test_nsga2_populations_include_the_told_points():
    s = sweep("nsga2", 6, startup=2)
    key = optuna.samplers.NSGAIISampler._get_generation_key()
    complete = s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert all(key in t.system_attrs for t in complete)
    extras = [t for t in complete if EXTRA_ATTR in t.user_attrs]
    assert len(extras) == 6 * 4
    assert max(t.system_attrs[key] for t in complete) >= 1  # 2 R-SFT runs' points make a generation


def test_random_is_the_baseline_that_learns_from_nothing():
    # Random search ignores results by design (the benchmark's baseline): told points change
    # nothing it draws, and they are still in the study (the front, MLflow).
    told = sweep("random", 5)
    assert suggested(told) == suggested(sweep("random", 5, tell_extra=False))
    assert told.extra_points_told == 5 * 4


# --- 3. extra draws honour the space --------------------------------------------------------------

def test_draw_honours_log_integer_choices_and_bounds():
    rng = random.Random(0)
    log_range = Param(low=1e-4, high=1e-2, log=True)
    xs = [draw(rng, log_range) for _ in range(4000)]
    assert all(1e-4 <= x <= 1e-2 for x in xs)
    below_geo_mean = sum(x < 1e-3 for x in xs) / len(xs)
    assert 0.45 < below_geo_mean < 0.55  # uniform would put ~9% below the geometric mean
    ints = [draw(rng, Param(low=2, high=8), integer=True) for _ in range(500)]
    assert set(ints) == set(range(2, 9)) and all(isinstance(v, int) for v in ints)
    choice = [draw(rng, Param(choices=[0.1, 0.5])) for _ in range(100)]
    assert set(choice) == {0.1, 0.5}
    tiny = [draw(rng, Param(low=0.0, high=1e-5)) for _ in range(200)]
    assert all(0.0 <= v <= 1e-5 for v in tiny) and len(set(tiny)) > 100  # no rounding to 4 decimals


def test_merge_candidates_log_scale_and_choices():
    space = {**DEMO_SPACE, "alpha": {"low": 1e-3, "high": 0.5, "log": True}, "sparsity": {"choices": [0.0, 0.5, 0.9]}}
    search = SearchConfig(space=space)
    cands = merge_candidates(search, 0.1, 0.5, 40, seed=1)
    extra = [c for c in cands if c["kind"] == "extra"]
    assert len(extra) == 39 and all(c["in_space"] for c in extra)
    assert {c["sparsity"] for c in extra} <= {0.0, 0.5, 0.9}
    assert sum(c["alpha"] < math.sqrt(1e-3 * 0.5) for c in extra) >= 10  # log-uniform: half below


def test_out_of_space_candidates_are_logged_and_refused_points_counted(caplog):
    search = SearchConfig(space={**DEMO_SPACE, "alpha": {"low": 0.1, "high": 0.8}})
    with caplog.at_level(logging.INFO, logger="mm4ke_ray.search.space"):
        cands = merge_candidates(search, 0.5, 0.5, 3, seed=0)
    pure = next(c for c in cands if c["kind"] == "pure_rsft")
    assert not pure["in_space"] and "outside the search space" in caplog.text
    searched, fixed = split_space(search)
    s = CandidateAwareOptunaSearch(space=searched, metric=OBJ, mode=["max", "max"],
                                   sampler=make_sampler(search))
    params = {**fixed, **s.suggest("a")}
    bad = [{"params": {**params, "alpha": 0.05}, "values": [0.5, 0.5]},  # below alpha's low
           {"params": params, "values": [float("nan"), 0.5]}]
    good = [{"params": {**params, "alpha": 0.3}, "values": [0.4, 0.6]}]
    s.on_trial_complete("a", {"edit_score": 0.5, "general_score": 0.5, EXTRA_POINTS_KEY: bad + good})
    assert (s.extra_points_told, s.extra_points_refused) == (1, 2)


# --- 4. constraints -------------------------------------------------------------------------------

def test_constraint_values_and_feasibility():
    mins = minimums(ObjectivesConfig(min_edit_score=0.6))
    assert mins == {"edit_score": 0.6}
    assert constraint_values({"edit_score": 0.7, "general_score": 0.1}, mins) == pytest.approx({"min_edit_score": -0.1})
    assert feasible({"edit_score": 0.7}, mins) and not feasible({"edit_score": 0.5}, mins)
    assert not feasible({"edit_score": float("nan")}, mins) and feasible({"edit_score": 0.1}, {})
    # The front's rule and the sampler's constraint values agree, at the minimum too.
    for v in (0.59, 0.6, 0.61, float("nan"), float("inf")):
        assert feasible({"edit_score": v}, mins) == all(c <= 0 for c in constraint_values({"edit_score": v}, mins).values())
    with pytest.raises(ValueError, match="min_general_score"):
        ObjectivesConfig(min_general_score=1.5)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_constraints_reach_the_study_and_the_front(sampler):
    mins = {"edit_score": 0.8}
    s = sweep(sampler, 5, constraints=mins, startup=2)
    complete = s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 25
    assert all(set(t.constraints) == {"min_edit_score"} for t in complete)  # told trials and extra points
    for t in complete:
        assert t.constraints["min_edit_score"] == pytest.approx(0.8 - t.values[0])
    assert any(t.constraints["min_edit_score"] > 0 for t in complete)  # some infeasible, so the test bites
    assert s.study.best_trials and all(t.values[0] >= 0.8 for t in s.study.best_trials)


def test_constraints_concentrate_the_search():
    # Edit score and general score trade off through α; the user wants edit >= 0.85.
    def tradeoff(p):
        return 1 - p["alpha"], 0.3 + 0.7 * p["alpha"]

    def feasible_share(constraints):
        shares = []
        for seed in range(3):
            s = sweep("tpe", 10, tradeoff, seed=seed, startup=2, constraints=constraints)
            later = suggested(s)[2:]
            shares.append(sum(1 - p["alpha"] >= 0.85 for p in later) / len(later))
        return statistics.mean(shares)

    assert feasible_share({"edit_score": 0.85}) > feasible_share(None) + 0.2
