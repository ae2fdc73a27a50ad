"""The sweep's objectives, derived from a candidate's metrics.

`edit_score` is a weighted mean of the edit metrics (percent → 0..1); `general_score` the mean
of each lm-eval task's retention above chance ((candidate − floor) ÷ (base − floor); base ÷
candidate for a perplexity) clamped to [0, 1], so it lies in 0..1 and no task can carry it
(see `general_score`). Both are maximised; `combined_score` mixes them for
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
    "general_score", True, "mean lm-eval retention above chance, clamped to 0..1; locality/100 without tasks"
)
COMBINED = Objective("combined_score", True, "w·edit_score + (1-w)·general_score")
OBJECTIVES = (EDIT, GENERAL)  # the Pareto objectives, in this order everywhere
# Each candidate's objective SEs as estimates of its abilities (records, documents): the front's
# error bars. Not the rung SEs of successive halving (`fidelity.EDIT_SE`), which are relative to
# the full evaluation and 0 there.
EDIT_STDERR, GENERAL_STDERR = "edit_score.stderr", "general_score.stderr"


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


# How retention is defined; recorded with every sweep (fingerprint, MLflow params), so sweeps
# scored under an older definition (raw candidate / base) are never compared with these.
RETENTION_DEFINITION = "above-chance:(c-floor)/(b-floor);perplexity:b/c;clamped-0..1"


def retention(
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
    floor: Mapping[str, float | None] | None = None,
) -> dict[str, float]:
    """Per task, how much of the base model's ability above chance the candidate keeps.

    (candidate − floor) / (base − floor), `floor` being the task's chance score (default 0):
    a candidate at chance keeps 0 of the task, whatever its raw ratio (0.25 / 0.30 on a
    4-choice task is 0.83 raw, 0 above chance). For a lower-is-better metric (a perplexity, per
    `higher_is_better`, default all higher) it is base / candidate and no floor applies.
    Edge cases, defined so the mean stays meaningful:
    - candidate and base both at the floor -> 1.0 (nothing was lost);
    - the base at or below its floor otherwise -> NaN (no ability to keep; `general_score`
      skips it, and the noise guard refuses such a task before a sweep);
    - a NaN score -> NaN. Scores must be >= 0. Values are logged as they are (above 1: the
      candidate did better; below 0: below chance); `general_score` clamps them to [0, 1].
    """
    missing = sorted(set(base) ^ set(candidate))
    if missing:
        raise ValueError(f"candidate and base scores must name the same tasks; differ on {missing}")
    out = {}
    for task, b in base.items():
        c = candidate[task]
        if c < 0 or b < 0:
            raise ValueError(f"task '{task}': scores must be >= 0, got candidate={c}, base={b}")
        if (higher_is_better or {}).get(task, True):
            f = (floor or {}).get(task) or 0.0
            num, den = c - f, b - f
        else:
            num, den = b, c
        if math.isnan(num) or math.isnan(den):
            out[task] = math.nan
        elif den <= 0:
            out[task] = 1.0 if num == 0 and den == 0 else math.nan
        else:
            out[task] = num / den
    return out


def general_score(
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
    floor: Mapping[str, float | None] | None = None,
) -> float:
    """Mean over tasks of retention (`retention`, above chance) clamped to [0, 1]: the share of
    the base's general ability kept.

    Why capped at 1: an uncapped mean lets one task's gain pay for another's loss, and the
    largest gains are where the base is smallest, i.e. noisiest (the paper's DROP EM 0.23 -> 1.9
    is a ratio of 8). Capped, a task at or above its base counts as "nothing lost" (1) and
    nothing more. Why at 0: a candidate below chance on a task has lost all of it, no more.
    Undefined ratios (NaN) are skipped; NaN if none is defined.
    """
    if not base:
        raise ValueError("general_score needs at least one task score")
    kept = retention(candidate, base, higher_is_better, floor).values()
    values = [min(max(v, 0.0), 1.0) for v in kept if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def noise_floor_stderr(score: float, n_docs: int, scale: float = 1.0) -> float:
    """An upper bound on a mean's standard error when lm-eval reports none (e.g. SQuAD 2.0).

    A per-document value in [0, M] with mean p has variance at most p·(M − p); M is the
    metric's own scale (`scale`: 100 for SQuAD 2.0's percent scores, else 1), never guessed
    from the score (an F1 of 0.8 on 0-100 is not a 0.8 on 0-1), except that a score above its
    declared scale must be a percent (a task missing from `task_stats.PERCENT_SCALE_TASKS`).
    A bound, so a task is judged at its noisiest.
    """
    if score > scale:
        scale = 100.0
    return math.sqrt(max(score * (scale - score), 0.0) / max(n_docs, 1))


def check_task_noise(
    scores: Mapping[str, float],
    stderr: Mapping[str, float | None],
    chance: Mapping[str, float],
    n_docs: Mapping[str, int],
    higher_is_better: Mapping[str, bool] | None = None,
    metrics: Mapping[str, str | None] | None = None,
    z: float = NOISE_Z,
    scale: Mapping[str, float] | None = None,
) -> None:
    """Refuse tasks whose base score is within `z` standard errors of zero or of chance.

    Pure: takes the base model's per-task results (as `GeneralResult` holds them, at the
    configured limit) and raises `UserError` (CLI exit 2) naming every such task, its score,
    floor and stderr, and the fix. `chance` is each task's floor (1/choices for a multiple-choice
    accuracy, 0 for generated answers); a missing stderr is bounded by `noise_floor_stderr` on
    the metric's `scale` (default 1).
    Lower-is-better metrics (perplexity) have no floor and are not checked.
    """
    problems = []
    for task, score in scores.items():
        if not (higher_is_better or {}).get(task, True):
            continue
        floor = float(chance.get(task) or 0.0)
        n = int(n_docs.get(task, 0))
        se = stderr.get(task)
        if se is None or not math.isfinite(se):
            se = noise_floor_stderr(score, n, (scale or {}).get(task, 1.0))
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
