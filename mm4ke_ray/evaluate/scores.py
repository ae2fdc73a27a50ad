"""The sweep's objectives, derived from a candidate's metrics.

`edit_score` is a weighted mean of the edit metrics (percent → 0..1); `general_score` the mean
of each lm-eval task's retention (candidate ÷ base) capped at 1, so it lies in 0..1 and no task
can carry it (see `general_score`). Both are maximised; `combined_score` mixes them for
schedulers and for picking one winner. Directions live here once: Tune modes and Optuna
directions derive from `OBJECTIVES`.

`check_task_noise` is the guard beside the cap: a task whose base score sits within its own
standard error of zero or of chance gives a ratio that is noise, and is refused before a sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mm4ke_ray.errors import UserError
from mm4ke_ray.schema import EDIT_METRICS, GEN_PREFIX, GENERATION


@dataclass(frozen=True)
class Objective:
    name: str
    higher_is_better: bool
    description: str

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"


EDIT = Objective("edit_score", True, "weighted mean of the edit metrics, 0..1")
GENERAL = Objective(
    "general_score", True, "mean lm-eval retention min(candidate/base, 1), 0..1; locality/100 without tasks"
)
COMBINED = Objective("combined_score", True, "w·edit_score + (1-w)·general_score")
OBJECTIVES = (EDIT, GENERAL)  # the Pareto objectives, in this order everywhere


def edit_score(metrics: dict, weights: dict[str, float], exclude: tuple[str, ...] = ()) -> float:
    """Weighted mean (0..1) of the edit metrics (given in percent) that are present."""
    total = weight_sum = 0.0
    for name, w in weights.items():
        value = metrics.get(name)
        if w > 0 and name not in exclude and value is not None and math.isfinite(value):
            total += w * value / 100.0
            weight_sum += w
    return total / weight_sum if weight_sum else 0.0


def edit_family(metrics: Mapping[str, float], edit_mode: str) -> dict[str, float]:
    """The edit metrics of one family under their bare names: teacher-forced ones as they are,
    generation ones (`gen.edit_succ`, ...) with the prefix dropped; what `objective_values` reads
    when `objectives.edit_mode` chooses that family. Metrics the family lacks are left out."""
    prefix = GEN_PREFIX if edit_mode == GENERATION else ""
    return {m: metrics[prefix + m] for m in EDIT_METRICS if metrics.get(prefix + m) is not None}


def objective_values(metrics: dict, general: float | None, weights: dict[str, float], combined_w: float) -> dict:
    """edit_score, general_score and combined_score for one candidate.

    Without general tasks (`general` None), locality stands in as the general objective and is
    left out of the edit score, so the two objectives stay distinct.
    """
    if general is None:
        loc = metrics.get("locality")
        general = (loc / 100.0) if loc is not None else 0.0
        edit = edit_score(metrics, weights, exclude=("locality",))
    else:
        edit = edit_score(metrics, weights)
    return {
        EDIT.name: edit,
        GENERAL.name: general,
        COMBINED.name: combined_w * edit + (1 - combined_w) * general,
    }


# --- general ability: retention, the bounded score, the noise guard --------------------------

NOISE_Z = 2.0  # a base score must clear its floor by this many standard errors (~95%)


def retention(
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> dict[str, float]:
    """Per task, how much of the base model's score the candidate keeps: candidate / base.

    For a lower-is-better metric (per `higher_is_better`, default all higher) it is base /
    candidate. Edge cases, defined so the mean stays meaningful:
    - both scores 0 -> 1.0 (nothing was lost);
    - the denominator 0 and the other score > 0 -> NaN (no ratio exists; `general_score` skips it);
    - a NaN score -> NaN. Scores must be >= 0. Values above 1 mean the candidate did better
      (logged as they are; `general_score` caps them).
    """
    missing = sorted(set(base) ^ set(candidate))
    if missing:
        raise ValueError(f"candidate and base scores must name the same tasks; differ on {missing}")
    out = {}
    for task, b in base.items():
        c = candidate[task]
        if c < 0 or b < 0:
            raise ValueError(f"task '{task}': scores must be >= 0, got candidate={c}, base={b}")
        num, den = (c, b) if (higher_is_better or {}).get(task, True) else (b, c)
        if math.isnan(num) or math.isnan(den):
            out[task] = math.nan
        elif den == 0:
            out[task] = 1.0 if num == 0 else math.nan
        else:
            out[task] = num / den
    return out


def general_score(
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Mean over tasks of min(retention, 1): the share of the base's general ability kept, 0..1.

    Why capped: an uncapped mean lets one task's gain pay for another's loss, and the largest
    gains are where the base is smallest, i.e. noisiest (the paper's DROP EM 0.23 -> 1.9 is a
    ratio of 8). Capped, a task at or above its base counts as "nothing lost" (1) and nothing
    more, so the score only falls when some task falls, and falls by that task's share of the
    loss. Undefined ratios (NaN) are skipped; NaN if none is defined.
    """
    if not base:
        raise ValueError("general_score needs at least one task score")
    kept = retention(candidate, base, higher_is_better).values()
    values = [min(v, 1.0) for v in kept if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def noise_floor_stderr(score: float, n_docs: int) -> float:
    """An upper bound on a mean's standard error when lm-eval reports none (e.g. SQuAD 2.0).

    A per-document value in [0, M] with mean p has variance at most p·(M − p); M is taken as 100
    for a score above 1 (percent-scaled metrics) and 1 otherwise. A bound, so a task is judged
    at its noisiest.
    """
    scale = 100.0 if score > 1.0 else 1.0
    return math.sqrt(max(score * (scale - score), 0.0) / max(n_docs, 1))


def check_task_noise(
    scores: Mapping[str, float],
    stderr: Mapping[str, float | None],
    chance: Mapping[str, float],
    n_docs: Mapping[str, int],
    higher_is_better: Mapping[str, bool] | None = None,
    metrics: Mapping[str, str | None] | None = None,
    z: float = NOISE_Z,
) -> None:
    """Refuse tasks whose base score is within `z` standard errors of zero or of chance.

    Pure: takes the base model's per-task results (as `GeneralResult` holds them, at the
    configured limit) and raises `UserError` (CLI exit 2) naming every such task, its score,
    floor and stderr, and the fix. `chance` is each task's floor (1/choices for a multiple-choice
    accuracy, 0 for generated answers); a missing stderr is bounded by `noise_floor_stderr`.
    Lower-is-better metrics (perplexity) have no floor and are not checked.
    """
    problems = []
    for task, score in scores.items():
        if not (higher_is_better or {}).get(task, True):
            continue
        floor = float(chance.get(task, 0.0))
        n = int(n_docs.get(task, 0))
        se = stderr.get(task)
        if se is None or not math.isfinite(se):
            se = noise_floor_stderr(score, n)
        if not math.isfinite(score) or score - floor <= z * se:
            what = "zero" if floor == 0 else f"chance ({floor:.4g})"
            metric = (metrics or {}).get(task) or "its metric"
            problems.append(
                f"  - {task!r} ({metric}): base score {score:.4g} on {n} docs is within {z:g} "
                f"stderr ({se:.3g}) of {what}; its retention ratio would be noise"
            )
    if problems:
        raise UserError(
            "general task(s) whose base score is noise at this limit:\n"
            + "\n".join(problems)
            + "\nFix: choose another metric for the task (evaluation.general_metrics, e.g. "
            "{drop: f1}), raise evaluation.general_limit, or drop the task from "
            "evaluation.general_tasks."
        )
