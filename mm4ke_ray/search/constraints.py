"""Objective constraints (`objectives.min_edit_score`, `min_general_score`) as Optuna sees them.

Optuna 5's way: each told trial carries constraint values (`Trial.set_constraint(key, value)`,
or `create_trial(constraints=...)` for an added point); a trial is feasible when every value is
<= 0. TPE, NSGA-II and GP then favour feasible regions, so the search concentrates where the
user will pick. Every told trial carries the same keys (GP requires it), even a trial with no
minimum set is not given any. The front marks infeasible candidates greyed, by the same rule
(`evaluate.pareto_front.feasible`: value >= minimum; constraint value <= 0 here).
"""

from __future__ import annotations

import math

from mm4ke_ray.config import ObjectivesConfig

PREFIX = "min_"  # constraint key: "min_" + objective name, e.g. min_edit_score


def minimums(objectives: ObjectivesConfig) -> dict[str, float]:
    """Objective name -> the minimum the user asked for (only those set)."""
    out = {}
    if objectives.min_edit_score is not None:
        out["edit_score"] = float(objectives.min_edit_score)
    if objectives.min_general_score is not None:
        out["general_score"] = float(objectives.min_general_score)
    return out


def constraint_values(values: dict[str, float], mins: dict[str, float]) -> dict[str, float]:
    """Optuna constraint values of a candidate: minimum - value per constrained objective
    (<= 0 feasible). A missing or non-finite value counts as infeasible by the whole minimum."""
    out = {}
    for name, low in mins.items():
        v = values.get(name)
        ok = isinstance(v, int | float) and math.isfinite(v)
        out[PREFIX + name] = low - float(v) if ok else max(low, 0.0) + 1.0
    return out
