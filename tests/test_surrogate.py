"""The per-delta surrogate over (α, sparsity) (issue 24 §3, search/surrogate.py), on hand-made
smooth planes: pure functions of (α, sparsity) that take microseconds, so the whole 6 × 6 grid's
front is known exactly and every claim below is about the search, not about noise.

Reference point (0, 0): both objectives are scores in [0, 1]. Measured here (README, "One R-SFT
run, its whole α × sparsity front"), share of the exhaustive 6 × 6 hypervolume at 8 / 10 / 12
evaluated merges, the pure R-SFT point first: quadratic 0.950 / 0.966 / 0.977, sigmoid 0.951 /
0.975 / 0.984, sharp 0.953 / 0.977 / 0.981, flat general 1.0. These planes have large fronts (17-24
of the 36 points non-dominated); issue 24's 0.97 at 8 is met on the flat plane only, at 10 on
two of the other three. The best 8-subset chosen knowing every value keeps 0.98-0.99.
"""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest

from mm4ke_ray.config import SearchConfig, SweepConfig
from mm4ke_ray.evaluate.pareto_front import hypervolume
from mm4ke_ray.search import surrogate as sur
from mm4ke_ray.search.surrogate import FrontSurrogate, choose_mode, hypervolume_2d, surrogate_search

ALPHAS = [0.0, 0.19, 0.38, 0.57, 0.76, 0.95]
SPARSITIES = [0.0, 0.16, 0.32, 0.48, 0.64, 0.8]
POOL = list(itertools.product(ALPHAS, SPARSITIES))
REF = (0.0, 0.0)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# (edit, general) of a merge at (α, sparsity): edits fade with α and pruning, general ability returns.
PLANES = {
    "quadratic": lambda a, s: (1 - 0.8 * a**2 - 0.5 * s**2, 0.4 + 0.5 * a - 0.2 * a * a + 0.3 * s),
    "sigmoid": lambda a, s: (_sig((0.6 - a - 0.5 * s) / 0.1), 0.5 + 0.45 * _sig((a + 0.3 * s - 0.5) / 0.15)),
    "sharp": lambda a, s: ((1 - s**3) * _sig((0.7 - a) / 0.06), 0.3 + 0.6 * a**2 + 0.1 * s),
    "flat_general": lambda a, s: (1 - a * s - 0.3 * a, 0.9 + 0.02 * a - 0.01 * s**2),
}


def _evaluator(plane, log=None, prune=()):
    def evaluate(group):
        full, pruned = [], []
        for c in group:
            if log is not None:
                log.append((c["alpha"], c["sparsity"]))
            if (c["alpha"], c["sparsity"]) in prune:
                pruned.append(c)
                continue
            edit, general = plane(c["alpha"], c["sparsity"])
            full.append({**c, "metrics": {"edit_score": edit, "general_score": general}})
        return full, pruned
    return evaluate


def _share(plane, full) -> float:
    exhaustive = hypervolume_2d([plane(a, s) for a, s in POOL], REF)
    found = hypervolume_2d([(c["metrics"]["edit_score"], c["metrics"]["general_score"]) for c in full], REF)
    return found / exhaustive


def _search(plane, budget, first=((0.0, 0.0),), batch_size=1, **kw):
    cands = [{"kind": "pure_rsft" if p == (0.0, 0.0) else "sampled", "alpha": p[0], "sparsity": p[1]} for p in first]
    return surrogate_search(cands, POOL, budget, _evaluator(plane), batch_size=batch_size, **kw)


def test_hypervolume_2d_is_optunas():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.random((int(rng.integers(1, 12)), 2))
        ref = (0.1, 0.05)
        rows = [{"edit_score": a, "general_score": b} for a, b in pts]
        assert hypervolume_2d(pts, ref) == pytest.approx(hypervolume(rows, ref), abs=1e-12)


@pytest.mark.parametrize("name", sorted(PLANES))
def test_eight_merges_keep_most_of_the_exhaustive_front(name):
    plane = PLANES[name]
    full, pruned, info = _search(plane, budget=8)
    assert info["surrogate.evaluations"] <= 8 and not pruned
    share = _share(plane, full)
    assert share >= 0.94, f"{name}: {share:.3f} of the 6 × 6 grid's hypervolume with 8 merges"
    # Better than 8 merges drawn at random from the grid (the pure R-SFT point included), on average.
    rng = random.Random(0)
    draws = [[(0.0, 0.0), *rng.sample(POOL[1:], 7)] for _ in range(200)]
    rand = np.mean([_share(plane, _evaluator(plane)([{"alpha": a, "sparsity": s} for a, s in d])[0]) for d in draws])
    assert share >= min(0.999, rand + 0.02), f"{name}: surrogate {share:.3f}, random 8-subsets {rand:.3f}"


@pytest.mark.parametrize("name", sorted(PLANES))
def test_twelve_merges_keep_097(name):
    plane = PLANES[name]
    full, _, info = _search(plane, budget=12)
    assert info["surrogate.evaluations"] <= 12
    assert _share(plane, full) >= 0.97


def _random_planes(n: int, seed: int = 1) -> list:
    """Smooth planes of the shape a real delta shows: edits fade along a sigmoid in α and a power of
    sparsity, general ability returns along another, capped at 1 (retention)."""
    rng = random.Random(seed)
    planes = []
    for _ in range(n):
        c1, w1, w2, p, t1 = rng.uniform(.3, .9), rng.uniform(.5, 1.5), rng.uniform(0, 1), rng.choice([1, 2, 3]), \
            rng.uniform(.05, .3)
        g0, g1, c2, t2, v = rng.uniform(.3, .9), rng.uniform(.05, .5), rng.uniform(.2, .8), rng.uniform(.1, .4), \
            rng.uniform(0, .5)
        planes.append(lambda a, s, c1=c1, w1=w1, w2=w2, p=p, t1=t1, g0=g0, g1=g1, c2=c2, t2=t2, v=v: (
            _sig((c1 - a * w1 - w2 * s**p) / t1), min(1.0, g0 + g1 * _sig((a + v * s - c2) / t2))))
    return planes


def test_random_smooth_planes_eight_merges():
    # 12 random planes of the real shape: 8 of 36 merges keep 0.98 of the grid's hypervolume on
    # average and at least 0.97 on most (measured: mean 0.991, all 12 at 0.978 or more).
    shares = [_share(plane, _search(plane, budget=8)[0]) for plane in _random_planes(12)]
    assert np.mean(shares) >= 0.98 and sum(s >= 0.97 for s in shares) >= 9 and min(shares) >= 0.9, shares


def test_it_stops_when_the_front_can_no_longer_move():
    # A flat general ability: the front is a handful of points near α = 0; given all 36 merges to
    # spend, it stops early with the front found.
    full, _, info = _search(PLANES["flat_general"], budget=36)
    assert info["surrogate.stopped"] == "front settled"
    assert info["surrogate.evaluations"] < 20
    assert _share(PLANES["flat_general"], full) >= 0.99


def test_sampled_point_first_batches_and_repeatable():
    plane = PLANES["quadratic"]
    first = ((0.33, 0.21), (0.0, 0.0))
    a = _search(plane, budget=8, first=first, batch_size=3)
    b = _search(plane, budget=8, first=first, batch_size=3)
    assert [(c["alpha"], c["sparsity"]) for c in a[0]] == [(c["alpha"], c["sparsity"]) for c in b[0]]
    assert (a[0][0]["alpha"], a[0][0]["sparsity"]) == (0.33, 0.21)  # the sampled point leads
    assert a[2]["surrogate.evaluations"] == 8 and a[2]["surrogate.batches"] == 3  # 4 first, then 3 + 1
    points = [(c["alpha"], c["sparsity"]) for c in a[0]]
    assert len(set(points)) == len(points)


def test_halving_inside_a_batch_pruned_points_count_and_are_not_told():
    plane = PLANES["sigmoid"]
    seen = []
    cands = [{"kind": "pure_rsft", "alpha": 0.0, "sparsity": 0.0}]
    probe = FrontSurrogate(POOL, spent={(0.0, 0.0)})
    prune = set(probe.space_filling(1))  # the first space-filling point: halving drops it below the full rung
    full, pruned, info = surrogate_search(cands, POOL, 8, _evaluator(plane, seen, prune), batch_size=2)
    assert [(c["alpha"], c["sparsity"]) for c in pruned] == sorted(prune)
    assert info["surrogate.evaluations"] == len(seen) == 8 == len(full) + len(pruned)
    assert len(set(seen)) == len(seen)  # a pruned point is never proposed again


def test_choose_mode():
    assert choose_mode(36, 8, 4) == "surrogate"
    assert choose_mode(36, 36, 4) == "exhaustive"
    assert choose_mode(9, 10, 4) == "exhaustive"
    assert choose_mode(36, 4, 4) == "random"


def test_candidate_grid_follows_the_space():
    space = SearchConfig(space={"alpha": {"low": 0.0, "high": 0.5}, "sparsity": {"choices": [0.0, 0.4]}}).space
    grid = sur.candidate_grid(space, 3)
    assert grid == [(0.0, 0.0), (0.0, 0.4), (0.25, 0.0), (0.25, 0.4), (0.5, 0.0), (0.5, 0.4)]


def test_surrogate_tells_only_full_results():
    s = FrontSurrogate(POOL)
    s.tell((0.0, 0.0), (1.0, 0.1))
    s.tell((0.95, 0.8), None)
    assert list(s.told) == [(0.0, 0.0)] and (0.95, 0.8) in s.spent


# --- the sweep's path: config -> TrialContext -> the trial's candidate loop -------------------------


def test_config_selects_the_surrogate():
    cfg = SweepConfig.model_validate({"merge": {"candidates": "surrogate", "extra_candidates": 7, "grid": 6}})
    assert cfg.merge.candidates == "surrogate" and cfg.merge.grid == 6
    with pytest.raises(ValueError, match="candidates"):
        SweepConfig.model_validate({"merge": {"candidates": "bayes"}})


def _ctx(candidates: str, extra: int, actors: int = 2):
    from mm4ke_ray.evaluate.candidate import EvalSettings
    from mm4ke_ray.search.trial import TrialContext

    search = SearchConfig(seed=3, space={"alpha": {"low": 0.0, "high": 0.95}, "sparsity": {"low": 0.0, "high": 0.8}})
    return TrialContext(settings=EvalSettings(model="m", edits="e"), search=search, extra_candidates=extra,
                        runner="task", rsft_cpus=1, rsft_gpus=0, storage_path="/tmp", actors=tuple(range(actors)),
                        merge_candidates=candidates, merge_grid=6)


def _fake_pool(monkeypatch, plane):
    """The trial's `_evaluate_candidates` without Ray: the plane's values, every candidate in full."""
    from mm4ke_ray.search import trial_candidates

    calls = []

    def fake(ctx, cands, delta_ref, trial_id, store=None, keep_first=True):
        calls.append((trial_id, len(cands), keep_first))
        for i, c in enumerate(cands):
            edit, general = plane(c["alpha"], c["sparsity"])
            c["index"] = i
            c["metrics"] = {"edit_score": edit, "general_score": general, "eval_records": 3, "eval_docs": 2}
        return cands, [], {"eval_compute_records": 3 * len(cands), "eval_compute_docs": 2 * len(cands),
                           "eval_compute_seconds": 0.0}

    monkeypatch.setattr(trial_candidates, "_evaluate_candidates", fake)
    return calls


def test_the_trial_uses_the_surrogate_and_tells_every_full_candidate(monkeypatch):
    from mm4ke_ray.search import trial
    from mm4ke_ray.search.searcher import EXTRA_POINTS_KEY

    calls = _fake_pool(monkeypatch, PLANES["sigmoid"])
    monkeypatch.setattr(trial, "run_trial_rsft", lambda ctx, params, trial_id: ({"status": "ok"}, "/tmp"))
    monkeypatch.setattr(trial, "load_delta", lambda folder: ({}, None))
    monkeypatch.setattr(trial.ray, "put", lambda value: value)
    params = {"layer": 1, "lr": 1e-4, "threshold": 0.1, "epochs": 1, "steps": 2, "alpha": 0.31, "sparsity": 0.22}
    report, _ = trial._run_trial(params, _ctx("surrogate", extra=7), "trial_x")
    cands = report["candidates"]
    assert (cands[0]["kind"], cands[0]["alpha"], cands[0]["sparsity"]) == ("sampled", 0.31, 0.22)
    assert report["num_candidates"] == len(cands) == report["surrogate.evaluations"] <= 8
    assert len(calls) >= 2 and calls[0] == ("trial_x", 4, True)  # the first batch, then batches of 2 actors
    assert all(n <= 2 and not keep for _, n, keep in calls[1:])
    assert [c["index"] for c in cands] == list(range(len(cands)))
    told = report[EXTRA_POINTS_KEY]
    assert len(told) == len(cands) - 1  # every full candidate but the sampled one, which Tune tells
    assert {(p["params"]["alpha"], p["params"]["sparsity"]) for p in told} == \
        {(c["alpha"], c["sparsity"]) for c in cands[1:]}
    assert report["eval_compute_records"] == 3 * len(cands)


def test_random_stays_the_default_and_small_budgets_fall_back(monkeypatch):
    from mm4ke_ray.search import trial_candidates

    params = {"alpha": 0.31, "sparsity": 0.22}
    calls = _fake_pool(monkeypatch, PLANES["sigmoid"])
    full, _, compute = trial_candidates.evaluate_merges(_ctx("random", extra=7), params, None, "t", None)
    assert len(full) == 8 and len(calls) == 1 and "surrogate.evaluations" not in compute
    full, _, compute = trial_candidates.evaluate_merges(_ctx("surrogate", extra=3), params, None, "t", None)
    assert len(full) == 4 and "surrogate.evaluations" not in compute  # too few to fit: random extras


def test_driver_passes_the_merge_settings():
    from mm4ke_ray.evaluate.candidate import EvalSettings
    from mm4ke_ray.search import driver

    cfg = SweepConfig.model_validate({"merge": {"candidates": "surrogate", "extra_candidates": 7, "grid": 5}})
    run = SimpleNamespace(config=cfg, settings=EvalSettings(model="m", edits="e"), experiment_dir="/tmp/x",
                          pool=SimpleNamespace(actors=[]), front_key=None)
    ctx = driver._trial_context(run)
    assert (ctx.merge_candidates, ctx.merge_grid, ctx.extra_candidates) == ("surrogate", 5, 7)


def test_with_halving_each_batch_has_its_rung_record_and_only_the_first_keeps_the_sampled(monkeypatch):
    import dataclasses

    from mm4ke_ray.search import trial_candidates

    calls = _fake_pool(monkeypatch, PLANES["sharp"])
    stores = []
    monkeypatch.setattr(trial_candidates, "_store", lambda ctx, key, digest, cands: stores.append((key, digest, len(cands))))
    ctx = _ctx("surrogate", extra=7)
    ctx = dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, fidelity_rungs=3), rungs_path="/tmp/r")
    full, _, compute = trial_candidates.evaluate_merges(ctx, {"alpha": 0.31, "sparsity": 0.22}, None, "t9", "abc")
    assert [k for k, _, _ in stores] == ["t9", *(f"t9-b{i}" for i in range(1, len(stores)))]
    assert {d for _, d, _ in stores} == {"abc"} and [n for *_, n in stores] == [n for _, n, _ in calls]
    assert [keep for *_, keep in calls] == [True] + [False] * (len(calls) - 1)
    assert compute["surrogate.evaluations"] == len(full) <= 8
