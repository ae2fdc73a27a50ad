"""The sweep's objectives, derived from a candidate's metrics.

`edit_score` is a weighted mean of the edit metrics (percent → 0..1); `general_score` the mean
lm-eval retention (candidate ÷ base). Both are maximised; `combined_score` mixes them for
schedulers and for picking one winner. Directions live here once: Tune modes and Optuna
directions derive from `OBJECTIVES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
GENERAL = Objective("general_score", True, "mean lm-eval retention (candidate/base); locality/100 without tasks")
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
