"""The config's search space as Optuna distributions, the sampler, and extra merge points."""

from __future__ import annotations

import json
import logging
import math
import random
import zlib

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mm4ke_ray.config import SCHEDULE_FIELDS, Param, ScheduleParam, SearchConfig, SearchSpace
from mm4ke_ray.schema import ALPHA, EXTRA, MERGE_PARAMS, PURE_RSFT, SAMPLED, SPARSITY
from mm4ke_ray.search.startup import RSFTStartupSampler

log = logging.getLogger(__name__)

INT_PARAMS = ("steps", "epochs", "layer")


def _value(name: str, v):
    """A configured value as the trial gets it: a schedule name stays a name."""
    return v if isinstance(v, str) else int(v) if name in INT_PARAMS else float(v)


def _distribution(name: str, p: Param | ScheduleParam):
    if p.choices is not None:
        return CategoricalDistribution([_value(name, v) for v in p.choices])
    if name in INT_PARAMS:
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def split_space(search: SearchConfig) -> tuple[dict, dict]:
    """(searched: name → Optuna distribution, fixed: name → value)."""
    searched, fixed = {}, {}
    for name, p in search.space:
        if p.fixed:
            fixed[name] = _value(name, p.choices[0])
        else:
            searched[name] = _distribution(name, p)
    return searched, fixed


def make_sampler(search: SearchConfig, points_per_trial: int = 1) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded, with its start-up counted in R-SFT configurations.

    `points_per_trial`: study trials each R-SFT run tells (1 + its in-space extra merge points).
    TPE is multivariate with constant liar for parallel trials. NSGA-II's generation is
    `startup_trials` R-SFT runs' worth of points (its generation 0 is its random start-up), at
    least the 2 parents its crossover needs. Random search learns from nothing by design: it is
    the baseline the others are measured against (benchmarks/bench_search_quality.py).
    """
    seed = search.seed
    startup = search.startup_trials
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "nsga2":
        population = max(2, max(1, startup) * max(1, points_per_trial))
        # Its crossovers mix whole told points; there is no density to narrow onto one run.
        return RSFTStartupSampler(optuna.samplers.NSGAIISampler(seed=seed, population_size=population), startup,
                                  seed=seed)

    def model(s: int | None):
        if search.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=s, multivariate=True, constant_liar=True, n_startup_trials=4)
        return optuna.samplers.GPSampler(seed=s, n_startup_trials=4)

    # α/sparsity from every told point, R-SFT parameters from one point per R-SFT configuration.
    return RSFTStartupSampler(model(seed), startup, seed=seed, rsft_model=model(None if seed is None else seed + 1))


# The paper's schedule (constant η, no warm-up): left out of the seed below, so a sweep that does not
# set a schedule draws the extra merge candidates it drew before the schedule was a search parameter.
_DEFAULT_SCHEDULE = {k: SearchSpace.model_fields[k].default.choices[0] for k in SCHEDULE_FIELDS}


def candidate_seed(seed: int, params: dict) -> int:
    """The seed of a trial's extra merge candidates: the sweep's seed plus a hash of the trial's
    parameters (not its id, which is random), so a rerun draws the same points."""
    keyed = {k: v for k, v in params.items() if k not in _DEFAULT_SCHEDULE or v != _DEFAULT_SCHEDULE[k]}
    return seed + zlib.crc32(json.dumps(keyed, sort_keys=True).encode()) % 10_000


def draw(rng: random.Random, p: Param, integer: bool = False) -> float:
    """One value of `p` drawn as the search space says: a choice, a log-uniform or a uniform
    value, whole numbers for integer parameters; always inside [low, high]."""
    if p.choices is not None:
        v = rng.choice(p.choices)
        return int(v) if integer else float(v)
    if integer:
        low, high = math.ceil(p.low), math.floor(p.high)
        if p.log:
            return min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high))))))
        return rng.randint(low, high)
    v = math.exp(rng.uniform(math.log(p.low), math.log(p.high))) if p.log else rng.uniform(p.low, p.high)
    return min(p.high, max(p.low, v))  # exp(log(x)) may round a hair outside the range


def merge_candidates(search: SearchConfig, alpha: float, sparsity: float, extra: int, seed: int) -> list[dict]:
    """The sampled (α, sparsity), the pure R-SFT point (0, 0), then `extra - 1` seeded draws.

    Every candidate says whether Optuna may be told it (only points inside the search space);
    one that may not is logged. Fewer distinct draws than asked (a small choice list) are logged.
    """
    space = search.space
    cands = [{"kind": SAMPLED, ALPHA: alpha, SPARSITY: sparsity}]
    if extra <= 0:
        mark_in_space(space, cands)
        return cands
    seen = {(alpha, sparsity)}
    if (0.0, 0.0) not in seen:
        cands.append({"kind": PURE_RSFT, ALPHA: 0.0, SPARSITY: 0.0})
        seen.add((0.0, 0.0))
    rng = random.Random(seed)
    tries = 0
    while len(cands) < extra + 1 and tries < 100 * (extra + 1):
        tries += 1
        point = (draw(rng, space.alpha), draw(rng, space.sparsity))
        if point not in seen:
            seen.add(point)
            cands.append({"kind": EXTRA, ALPHA: point[0], SPARSITY: point[1]})
    if len(cands) < extra + 1:
        log.info("only %d distinct merge candidates in the space (asked for %d)", len(cands), extra + 1)
    mark_in_space(space, cands)
    return cands


def mark_in_space(space, cands: list[dict]) -> None:
    for c in cands:
        c["in_space"] = all(_contains(getattr(space, k), c[k]) for k in MERGE_PARAMS)
        if not c["in_space"]:
            log.info("merge candidate %s (α %g, sparsity %g) is outside the search space: evaluated, "
                     "not told to the sampler", c["kind"], c[ALPHA], c[SPARSITY])


def _contains(p: Param, v: float) -> bool:
    if p.choices is not None:
        return v in p.choices
    return p.low <= v <= p.high
