"""Evidence before a drop: does a lower rung show, beyond doubt, that one candidate is better?

Successive halving (fidelity.py) may drop a candidate only on evidence, at a stated error rate
per comparison. A paired standard error alone is not evidence: two merges of one delta often
answer every item of a small rung alike, and a paired SE of 0 (or one differing item in 23)
then reads as certainty. So in one objective "b beats a" needs both
- an exact sign test (McNemar's for 0/1 items) on the discordant items, the items where the two
  differ: P(at least this many wins | wins and losses equally likely) <= error_rate, which no
  number of ties can satisfy (5 wins without a loss is the fewest at 0.05); and
- the mean difference, in the objective's own units, at least z standard errors of the paired
  differences, z = the one-sided normal quantile of error_rate, so a few large losses are not
  outvoted by many small wins.
Items that do not line up (no per-item scores) fall back to the unpaired SE of the difference,
a conservative bound for items that correlate; an SE of 0 or unknown is no evidence.
Against an exact full-fidelity point, a's rung mean is an estimate whose SE is floored by a
Jeffreys bound: items in [0, 1] with the rung's mean m have variance at most m(1 - m), taken at
the Jeffreys posterior mean (n m + 1/2) / (n + 1), so a rung whose items are all 0 or all 1 still
carries the uncertainty of its n items.
Pure Python (no Ray, no model).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from statistics import NormalDist

from mm4ke_ray.errors import UserError

# The error rate per comparison, stated with every run (`evaluation.fidelity.error_rate`).
DROP_RULE = "sign test on discordant items + paired z on the mean difference, per objective, both objectives"


def z_for(error_rate: float) -> float:
    """The one-sided normal quantile of an error rate: 0.05 -> 1.645, 0.5 -> 0."""
    if not 0 < error_rate <= 0.5:
        raise ValueError(f"error_rate must be in (0, 0.5], got {error_rate}")
    return NormalDist().inv_cdf(1 - error_rate)


def z_error_rate(z: float) -> float:
    """The error rate per comparison of a one-sided margin of z standard errors (an old margin_z)."""
    return 1 - NormalDist().cdf(z)


def sign_test_pvalue(wins: int, losses: int) -> float:
    """Exact one-sided sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2); 1 without
    discordant items (ties say nothing about which is better)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return math.fsum(math.comb(n, k) for k in range(wins, n + 1)) / 2.0**n


def min_sign_items(error_rate: float) -> int:
    """The fewest discordant items on which the sign test can reach `error_rate`: all of them one
    way, P = 2^-n <= error_rate (0.05 -> 5, 0.1 -> 4, 0.5 -> 1). A rung with fewer items (records,
    or documents over all tasks) can never show one candidate of a trial worse than another."""
    z_for(error_rate)  # refuses an error rate outside (0, 0.5]
    n = 1
    while sign_test_pvalue(n, 0) > error_rate:
        n += 1
    return n


def _fpc(n: int, population: int) -> float:
    """Finite-population correction of a mean of n of `population` items drawn without replacement
    (0 when the n are the whole population: the mean is then exact)."""
    return math.sqrt((population - n) / (population - 1)) if population > n else 0.0


def paired_beats(groups: Sequence[tuple[Sequence[float], int]], error_rate: float) -> bool:
    """Whether b beats a in one objective, from per-item differences b - a.

    `groups`: (differences, population) per item list; the objective is the mean over groups of
    each group's mean (one group for the edit score, one per lm-eval task for the general score).
    Both the sign test on the discordant items (all groups pooled) and the paired z test on the
    objective's mean difference (each group's SE finite-population corrected) must pass.
    """
    if not groups or any(not diffs for diffs, _ in groups):
        return False
    wins = sum(1 for diffs, _ in groups for d in diffs if d > 0)
    losses = sum(1 for diffs, _ in groups for d in diffs if d < 0)
    if sign_test_pvalue(wins, losses) > error_rate:
        return False
    mean = math.fsum(math.fsum(d) / len(d) for d, _ in groups) / len(groups)
    var = 0.0
    for diffs, population in groups:
        n = len(diffs)
        if n > 1:
            mu = math.fsum(diffs) / n
            var += math.fsum((d - mu) ** 2 for d in diffs) / (n - 1) / n * _fpc(n, population) ** 2
    se = math.sqrt(var) / len(groups)
    return mean > 0 and mean >= z_for(error_rate) * se


def unpaired_beats(difference: float, se: float | None, error_rate: float) -> bool:
    """Whether b beats a by a difference of means with a known, positive SE of the difference."""
    return se is not None and se > 0 and difference > 0 and difference >= z_for(error_rate) * se


def jeffreys_floor(items: Sequence[float], population: int) -> float:
    """SE floor of the mean of `items` (n of `population`, drawn without replacement), taken to lie
    in [0, s] with s = max(1, the largest item): s times the SE of a Bernoulli mean at the
    Jeffreys posterior mean (n m / s + 1/2) / (n + 1). Infinite for fewer than 2 items: one item
    shows no spread, and a drop on it would rest on the bound alone."""
    n = len(items)
    if n < 2:
        return math.inf
    s = max(1.0, *items)
    m = (max(0.0, math.fsum(items)) / s + 0.5) / (n + 1)
    return s * math.sqrt(m * (1 - m) / n) * _fpc(n, population)


def check_halving_evidence(stderr: dict[str, float | None], higher_is_better: dict[str, bool],
                           exact: Collection[str] = ()) -> None:
    """UserError naming the general outputs (the base's, per task) on which no lower rung can show a
    candidate worse: no standard error (no per-document values, e.g. SQuAD 2.0's), or
    lower-is-better (retention b / c is not linear in the candidate's score). Halving with them
    would never drop anything on evidence (both objectives must show it), at extra cost. Tasks in
    `exact` (every rung scores all their documents: `RungPlan.exact_tasks`) need no evidence:
    their scores at a lower rung are the full ones."""
    blind = sorted(t for t, se in stderr.items()
                   if t not in exact and (se is None or not higher_is_better.get(t, True)))
    if blind:
        raise UserError(f"evaluation.fidelity: general task(s) {blind} report no per-document values or are "
                        "lower-is-better, so no lower rung can show a candidate worse on them and halving would "
                        "evaluate every candidate in full at extra cost; leave them out of "
                        "evaluation.general_tasks or set evaluation.fidelity.enabled: false")
