"""The config's search space as Optuna distributions, the sampler, and extra merge points."""

from __future__ import annotations

import random

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mm4ke_ray.config import Param, SearchConfig

INT_PARAMS = ("steps", "epochs", "layer")
MERGE_PARAMS = ("alpha", "sparsity")


def _distribution(name: str, p: Param):
    if p.choices is not None:
        values = [int(v) if name in INT_PARAMS else float(v) for v in p.choices]
        return CategoricalDistribution(values)
    if name in INT_PARAMS:
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def split_space(search: SearchConfig) -> tuple[dict, dict]:
    """(searched: name → Optuna distribution, fixed: name → value)."""
    searched, fixed = {}, {}
    for name, p in search.space:
        if p.fixed:
            v = p.choices[0]
            fixed[name] = int(v) if name in INT_PARAMS else float(v)
        else:
            searched[name] = _distribution(name, p)
    return searched, fixed


def make_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded. TPE is multivariate with constant liar for parallel trials."""
    seed = search.seed
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=4)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _draw(rng: random.Random, p: Param) -> float:
    if p.choices is not None:
        return float(rng.choice(p.choices))
    return round(rng.uniform(p.low, p.high), 4)


def merge_candidates(search: SearchConfig, alpha: float, sparsity: float, extra: int, seed: int) -> list[dict]:
    """The sampled (α, sparsity), the pure R-SFT point (0, 0), then `extra - 1` seeded draws.

    Every candidate says whether Optuna may be told it (only points inside the search space).
    """
    space = search.space
    cands = [{"kind": "sampled", "alpha": alpha, "sparsity": sparsity}]
    if extra <= 0:
        return cands
    seen = {(alpha, sparsity)}
    if (0.0, 0.0) not in seen:
        cands.append({"kind": "pure_rsft", "alpha": 0.0, "sparsity": 0.0})
        seen.add((0.0, 0.0))
    rng = random.Random(seed)
    tries = 0
    while len(cands) < extra + 1 and tries < 100 * (extra + 1):
        tries += 1
        point = (_draw(rng, space.alpha), _draw(rng, space.sparsity))
        if point not in seen:
            seen.add(point)
            cands.append({"kind": "extra", "alpha": point[0], "sparsity": point[1]})
    for c in cands:
        c["in_space"] = all(_contains(getattr(space, k), c[k]) for k in MERGE_PARAMS)
    return cands


def _contains(p: Param, v: float) -> bool:
    if p.choices is not None:
        return v in p.choices
    return p.low <= v <= p.high
