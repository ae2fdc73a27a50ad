"""Pareto fronts and hypervolume over candidates, through Optuna's own multi-objective code.

Candidates become trials of a throwaway in-memory study, so "non-dominated" means exactly what
Optuna's `Study.best_trials` means; hypervolume is Optuna's `compute_hypervolume`.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume  # the implementation Optuna's samplers use

from mm4ke_ray.evaluate.scores import OBJECTIVES


def _values(row: dict) -> list[float] | None:
    vals = [row.get(o.name) for o in OBJECTIVES]
    if any(v is None or not math.isfinite(v) for v in vals):
        return None
    return [float(v) for v in vals]


def pareto_front(rows: list[dict]) -> list[int]:
    """Indices of the non-dominated rows (all objectives maximised), in input order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[o.direction for o in OBJECTIVES])
    for i, row in enumerate(rows):
        vals = _values(row)
        if vals is not None:
            study.add_trial(optuna.trial.create_trial(values=vals, user_attrs={"row": i}))
    return sorted(t.user_attrs["row"] for t in study.best_trials)


def hypervolume(rows: list[dict], reference: tuple[float, ...] = (0.0, 0.0)) -> float:
    """Area dominated by the rows' objectives above `reference` (objectives maximised)."""
    points = [v for v in map(_values, rows) if v is not None and all(a > r for a, r in zip(v, reference, strict=True))]
    if not points:
        return 0.0
    # Optuna minimises: negate both points and reference.
    return float(compute_hypervolume(-np.asarray(points), -np.asarray(reference, dtype=float)))
