"""Successive halving over evaluation fidelity: rung subsets, promotion on evidence, rung standard error.

Ray-free and model-free: plain numbers in, plain numbers out, so the sweep (search/) can call it
from the driver or an actor and tests can check it on hand-made points.

Rungs. With R rungs and reduction factor eta, rung r (0-based) evaluates a candidate on a
fraction eta^-(R-1-r) of the edit records and of each lm-eval task's documents; the last rung is
the full evaluation. The subsets are the prefixes of one seeded permutation per item list
(records; each task's documents), so they are nested (a candidate's rung-0 items are part of its
rung-1 items: a promoted candidate scores only the rung's new items, `rung_reuse.py`) and
identical for every candidate of a sweep (paired comparisons) and for every run with the same
seed. A lower rung too small for the sign test is raised to its minimum, or skipped where it
cannot give evidence at all (`rung_plan.py`).

Promotion. Both objectives (edit, general) are maximised. A lower rung drops candidate a only
when another candidate b of the rung *dominates it beyond doubt*: in each objective the rung's
items show b better (`evidence.py`: an exact sign test on the items where the two differ and a
paired z test on the mean difference, each at `error_rate`), or when an exact full-fidelity
point of the sweep beats a's rung estimate by more than its (Jeffreys-floored) standard error.
Asking for evidence in both objectives (an intersection-union test) bounds the chance of
dropping a candidate that b does not truly dominate by `error_rate` per comparison; a tie, even
one over every item of a small rung, is no evidence. See `promote` for the whole rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mm4ke_ray.evaluate.evidence import jeffreys_floor, paired_beats, unpaired_beats, z_for
from mm4ke_ray.evaluate.rung_plan import (  # noqa: F401 - the rung plan's names, re-exported
    RungPlan,
    check_plan_args,
    halving_cost,
    nested_subsets,
    plan_rungs,
    rung_fractions,
    rung_sizes,
)


def mean_stderr(values: Sequence[float], population: int | None = None) -> float | None:
    """Standard error of the mean of per-record scores: sample std (n-1) / sqrt(n).

    None for fewer than 2 values (no spread to estimate). With `population` (the full rung's
    size N) the finite-population correction sqrt((N-n)/(N-1)) applies, because a rung draws its
    records without replacement from the full set: at the full rung the SE is 0 (the score is
    the full-fidelity score itself, not an estimate of it).
    """
    n = len(values)
    if n < 2:
        return None
    mu = math.fsum(values) / n
    se = math.sqrt(math.fsum((v - mu) ** 2 for v in values) / (n - 1) / n)
    if population is not None:
        if population < n:
            raise ValueError(f"population {population} is smaller than the {n} scores given")
        se *= math.sqrt((population - n) / (population - 1))
    return se


def edit_score_stderr(per_record_scores: Sequence[float], population: int | None = None) -> float | None:
    """SE of a rung's edit score, the mean over its records of each record's edit score."""
    return mean_stderr(per_record_scores, population)


@dataclass(frozen=True)
class RungItems:
    """A candidate's per-item scores at a rung, for paired comparisons (`dominates_beyond_doubt`).

    `edit`: each record's edit score, in the rung's record order (the objective is their mean).
    `general`: per lm-eval task, each document's value divided by the base's score on the rung
    (the objective is the mean over tasks of these means, before its cap at 1); without tasks,
    the one list of per-record locality that stands in for it. `*_population`: the full rung's
    sizes, for the finite-population correction. Items of two candidates of one rung line up.
    """

    edit: tuple[float, ...]
    edit_population: int
    general: dict[str, tuple[float, ...]] | None = None  # None: some task has no per-document mean
    general_population: dict[str, int] | None = None

    @classmethod
    def from_dict(cls, d: Mapping) -> RungItems:
        general = d.get("general")
        return cls(edit=tuple(float(v) for v in d["edit"]), edit_population=int(d["edit_population"]),
                   general=None if general is None else {t: tuple(float(v) for v in vs) for t, vs in general.items()},
                   general_population=None if general is None else {t: int(n) for t, n in
                                                                    d["general_population"].items()})

    def to_dict(self) -> dict:
        return {"edit": list(self.edit), "edit_population": self.edit_population,
                "general": None if self.general is None else {t: list(v) for t, v in self.general.items()},
                "general_population": self.general_population}


def paired_stderrs(b: RungItems | None, a: RungItems | None) -> tuple[float | None, float | None]:
    """SEs of b - a in (edit, general) from per-item differences; None where they cannot be
    paired (items missing or not lined up: different rungs, or a task without per-doc means)."""
    if a is None or b is None:
        return None, None
    edit = None
    if len(a.edit) == len(b.edit) and a.edit_population == b.edit_population:
        edit = mean_stderr([x - y for x, y in zip(b.edit, a.edit, strict=True)], a.edit_population)
    general = None
    if a.general is not None and b.general is not None and a.general.keys() == b.general.keys() and a.general:
        parts = []
        for task, av in a.general.items():
            bv, pop = b.general[task], (a.general_population or {}).get(task, len(av))
            se = mean_stderr([x - y for x, y in zip(bv, av, strict=True)], pop) if len(bv) == len(av) else None
            if se is None:
                parts = None
                break
            parts.append(se)
        general = None if parts is None else math.sqrt(math.fsum(se * se for se in parts)) / len(parts)
    return edit, general


@dataclass(frozen=True)
class RungResult:
    """One candidate's scores at a rung. A None standard error means unknown (fewer than 2 items).
    `items`, where known, makes comparisons with another candidate's paired."""

    key: str
    edit: float
    general: float
    edit_se: float | None = None
    general_se: float | None = None
    items: RungItems | None = None

    def values(self) -> tuple[float, float]:
        return (self.edit, self.general)

    def stderrs(self) -> tuple[float | None, float | None]:
        return (self.edit_se, self.general_se)


def _paired_groups(b: RungItems | None, a: RungItems | None) -> tuple[list | None, list | None]:
    """Per objective (edit, general), the (differences b - a, population) per item list, or None
    where the items do not line up (other rungs, or a task without per-document values)."""
    if a is None or b is None:
        return None, None
    edit = None
    if len(a.edit) == len(b.edit) and a.edit_population == b.edit_population:
        edit = [([x - y for x, y in zip(b.edit, a.edit, strict=True)], a.edit_population)]
    general = None
    if a.general and b.general and a.general.keys() == b.general.keys() \
            and all(len(a.general[t]) == len(b.general[t]) for t in a.general):
        general = [([x - y for x, y in zip(b.general[t], av, strict=True)],
                    (a.general_population or {}).get(t, len(av))) for t, av in a.general.items()]
    return edit, general


def general_exact(items: RungItems | None) -> bool:
    """Whether the rung scored every document of every task (`rung_plan`: a task with fewer
    documents than the sign test needs has all of them at every rung): its general score is then
    the full evaluation's, known rather than estimated."""
    if items is None or not items.general:
        return False
    population = items.general_population or {}
    return all(len(v) == population.get(t, -1) for t, v in items.general.items())


def dominates_beyond_doubt(b: RungResult, a: RungResult, error_rate: float) -> bool:
    """Whether the rung's items show b better than a in both objectives, each at `error_rate`.

    Per objective: paired (`evidence.paired_beats`: sign test on the discordant items and a
    paired z test) where both carry lined-up items, else the unpaired z test on
    sqrt(se_a^2 + se_b^2), no evidence where that SE is 0 or unknown. Better in both, not merely
    as good in one: "as good" would rest on ties, and two merges that answer every document of a
    small rung alike may still differ on the documents it has not seen (the most conservative
    merge of a trial is then the one wrongly dropped). The general items are uncapped
    retentions: b's uncapped general above a's means b's capped one is at least a's. Where both
    general scores are exact (`general_exact`: no document unseen), b at least as good as a there
    is known, not a tie that rests on chance, and suffices.
    """
    groups = _paired_groups(b.items, a.items)
    unpaired = [None if sa is None or sb is None else math.hypot(sa, sb)
                for sa, sb in zip(a.stderrs(), b.stderrs(), strict=True)]
    exact = (False, general_exact(a.items) and general_exact(b.items))
    for vb, va, group, se, known in zip(b.values(), a.values(), groups, unpaired, exact, strict=True):
        if known:
            if vb < va:
                return False
        elif group is not None:
            if not paired_beats(group, error_rate):
                return False
        elif not unpaired_beats(vb - va, se, error_rate):
            return False
    return True


def dominators(a: RungResult, results: Sequence[RungResult], error_rate: float) -> int:
    """How many of `results` dominate `a` beyond doubt (`a` itself never does)."""
    return sum(1 for b in results if b is not a and dominates_beyond_doubt(b, a, error_rate))


def _plain_pareto_ranks(results: Sequence[RungResult]) -> list[int]:
    """Non-dominated sorting rank (0 = the front) under plain dominance, for tie-breaking."""
    def dominates(b: RungResult, a: RungResult) -> bool:
        return all(x >= y for x, y in zip(b.values(), a.values(), strict=True)) and b.values() != a.values()

    ranks, left, rank = [0] * len(results), set(range(len(results))), 0
    while left:
        front = {i for i in left if not any(dominates(results[j], results[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


# Both objectives lie in [0, 1]: a point at 1 in an objective cannot be beaten there.
OBJECTIVE_MAX = 1.0


def _estimate_stderrs(a: RungResult) -> tuple[float | None, float | None]:
    """a's SEs as estimates of its full scores, floored by `evidence.jeffreys_floor` where its items
    are known (a rung whose items all agree still carries the doubt of its few items)."""
    if a.items is None:
        return a.stderrs()
    edit = jeffreys_floor(a.items.edit, a.items.edit_population)
    general = None
    if a.items.general:
        pops = a.items.general_population or {}
        floors = [jeffreys_floor(v, pops.get(t, len(v))) for t, v in a.items.general.items()]
        general = math.sqrt(math.fsum(f * f for f in floors)) / len(floors)
    return tuple(None if se is None and floor is None else max(x for x in (se, floor) if x is not None)
                 for se, floor in zip(a.stderrs(), (edit, general), strict=True))


def beaten_by_exact(a: RungResult, point: Sequence[float], error_rate: float) -> bool:
    """Whether an exact full-fidelity `point` (edit, general) beats a's rung estimate: in every
    objective by more than z(error_rate) of a's standard errors (floored, `_estimate_stderrs`).

    The point is a candidate's full evaluation (or the base's), so it has no error; a's rung
    score estimates a's full score. In an objective where the point sits at its ceiling (1) a
    cannot end above it, so no margin is asked there (general score is capped at 1, and merges
    that keep everything tie there); the other objective must then show the point strictly
    ahead. Where a's general score is exact (`general_exact`), the point at least as good there
    suffices. An unknown SE protects a.
    """
    z, strictly = z_for(error_rate), False
    exact = (False, general_exact(a.items))
    for vb, va, sa, known in zip(point, a.values(), _estimate_stderrs(a), exact, strict=True):
        if known:
            if vb < va:
                return False
            strictly = strictly or vb > va
        elif sa is not None and vb - va > 0 and vb - va >= z * sa:
            strictly = True
        elif not vb >= OBJECTIVE_MAX >= va:
            return False
    return strictly


def promote(results: Sequence[RungResult], reduction_factor: float, error_rate: float,
            front: Sequence[Sequence[float]] = ()) -> list[str]:
    """Keys of the candidates that go on to the next rung, in the order of `results`.

    Rule: a candidate goes on when no other candidate of the rung dominates it beyond doubt
    (`dominates_beyond_doubt`: better in both objectives, each at `error_rate`) and no point of
    `front` beats it (`beaten_by_exact`; the sweep's full-fidelity results so far). All such
    candidates go on, however many (the evidence, not a quota, decides; a noisy rung drops
    little). When fewer than ceil(n / reduction_factor) survive, the best of the dropped that
    `front` does not beat fill up to that minimum, so a rung of a few lucky outliers does not
    starve the next rung: ordered by how many candidates dominate them beyond doubt (fewer
    first), then by plain Pareto rank (non-dominated sorting), then by their position in
    `results` (deterministic). A candidate the sweep has already beaten with exact results is
    not worth a fuller look, minimum or not.
    """
    if reduction_factor <= 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
    z_for(error_rate)  # refuses an error rate outside (0, 0.5]
    keys = [r.key for r in results]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate candidate keys in a rung: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    if not results:
        return []
    beaten = {i for i, r in enumerate(results) if any(beaten_by_exact(r, p, error_rate) for p in front)}
    counts = [dominators(r, results, error_rate) for r in results]
    keep = {i for i, c in enumerate(counts) if c == 0 and i not in beaten}
    minimum = math.ceil(len(results) / reduction_factor)
    if len(keep) < minimum:
        ranks = _plain_pareto_ranks(results)
        dropped = sorted(set(range(len(results))) - keep - beaten, key=lambda i: (counts[i], ranks[i], i))
        keep |= set(dropped[: minimum - len(keep)])
    return [results[i].key for i in sorted(keep)]


# -- a trial's rung loop --------------------------------------------------------------------------

# Metric names a rung's evaluation adds to a candidate's metrics: the objectives' standard errors
# (what `promote` needs; absent at the full rung, where the score is exact) and what was evaluated.
EDIT_SE = "edit_score_se"
GENERAL_SE = "general_score_se"
EVAL_RECORDS = "eval_records"  # edit records this evaluation scored
EVAL_DOCS = "eval_docs"  # lm-eval documents this evaluation scored, all tasks together
RUNG_ITEMS = "rung_items"  # a lower rung's per-item scores (`RungItems.to_dict`): not a metric, never logged


def rung_result(key: str, metrics: Mapping) -> RungResult:
    """A candidate's `RungResult` out of the metrics one rung's evaluation returned."""
    items = metrics.get(RUNG_ITEMS)
    return RungResult(key=key, edit=float(metrics["edit_score"]), general=float(metrics["general_score"]),
                      edit_se=metrics.get(EDIT_SE), general_se=metrics.get(GENERAL_SE),
                      items=None if items is None else RungItems.from_dict(items))


def run_rungs(
    keys: Sequence[str],
    evaluate_at: Callable[[int, list[str]], Mapping[str, RungResult]],
    rungs: int,
    reduction_factor: float,
    error_rate: float,
    keep: Sequence[str] = (),
    front: Sequence[Sequence[float]] = (),
    skip: Sequence[int] = (),
) -> list[dict[str, RungResult]]:
    """Successive halving of one group of candidates: per rung, who was evaluated and how.

    `evaluate_at(rung, keys)` scores the given candidates at `rung` (in any way the caller likes:
    the sweep fans them out over its actor pool) and returns their `RungResult`s by key. After
    every rung but the last, `promote` picks who goes on; the keys in `keep` always go on (the
    sweep's sampled candidate: Optuna needs a full-fidelity value for the point it proposed).
    `front`: exact (edit, general) points the sweep has already evaluated in full, for `promote`.
    `skip`: lower rungs not evaluated (`RungPlan.skipped`): every candidate passes them as is.
    Returns one dict per rung (key -> result; empty for a skipped rung); the last one's keys
    reached the full evaluation. Rungs are evaluated in order and each only once.
    """
    check_plan_args(rungs, reduction_factor)
    if any(not 0 <= r < rungs - 1 for r in skip):
        raise ValueError(f"only lower rungs (0..{rungs - 2}) can be skipped, got {sorted(skip)}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate candidate keys: {list(keys)}")
    unknown = set(keep) - set(keys)
    if unknown:
        raise ValueError(f"keys to keep are not among the candidates: {sorted(unknown)}")
    alive, history = list(keys), []
    for rung in range(rungs):
        if not alive:
            break
        if rung in skip:
            history.append({})
            continue
        got = dict(evaluate_at(rung, list(alive)))
        missing = set(alive) - set(got)
        if missing:
            raise ValueError(f"rung {rung}: no result for {sorted(missing)}")
        history.append({k: got[k] for k in alive})
        if rung == rungs - 1:
            break
        promoted = set(promote([got[k] for k in alive], reduction_factor, error_rate, front)) | set(keep)
        alive = [k for k in alive if k in promoted]
    return history


def general_score_stderr(
    task_se: Mapping[str, float | None],
    base: Mapping[str, float],
    n_docs: Mapping[str, int],
    population: Mapping[str, int],
    higher_is_better: Mapping[str, bool] | None = None,
    floor: Mapping[str, float | None] | None = None,
    candidate: Mapping[str, float] | None = None,
) -> float | None:
    """SE of `general_score` (mean over T tasks of each task's retention) from each task's SE.

    Retention above chance (c_t − f_t) / (b_t − f_t) has SE se_t / (b_t − f_t) (the base's
    score on the same documents is a fixed divisor here); a perplexity's retention b_t / c_t
    has, by the delta method, SE (b_t / c_t) · se_t / c_t (c_t: the `candidate`'s score, the
    base's where not given). The mean over independent tasks has sqrt(sum SE_t^2) / T. Each
    task's SE gets the finite-population correction of its rung (n of the N documents; an empty
    `population` skips it: the SE of an estimate of the task's ability). The clamp to [0, 1] is
    ignored (it only shrinks the spread). A task whose base is at or below its floor is left out
    (as the score leaves it out); None when a counted task's SE is unknown, or none is counted.
    """
    total, counted = 0.0, 0
    for task, b in base.items():
        se, n, big_n = task_se.get(task), n_docs.get(task, 0), population.get(task, 0)
        if (higher_is_better or {}).get(task, True):
            span = b - ((floor or {}).get(task) or 0.0)
            if span <= 0:  # no ability to keep: `general_score` leaves the task out, and so does its SE
                continue
            scale = 1 / span
        else:
            c = (candidate or {}).get(task, b)
            if b <= 0 or c <= 0:
                return None
            scale = b / c / c
        if se is None or not math.isfinite(se):
            return None
        if big_n > 1 and n <= big_n:
            se *= math.sqrt((big_n - n) / (big_n - 1))
        total, counted = total + (se * scale) ** 2, counted + 1
    return math.sqrt(total) / counted if counted else None
