"""Pareto math over candidate rows, beside the objectives it ranks: the non-dominated set,
hypervolume, the combined-score ranking and the best pick.

Used alike by the sweep (its summary), tracking (the `pareto/` artifacts and tags), `pareto` and
`export --pick best`. Candidates become trials of a throwaway in-memory Optuna study, so
"non-dominated" means exactly what Optuna's `Study.best_trials` means; hypervolume is Optuna's
`compute_hypervolume`.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume  # the implementation Optuna's samplers use

from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.schema import BASE

ON_FRONT = "on_front"  # the column that marks a row on the front


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


def _num(value) -> float:
    return value if isinstance(value, float | int) and math.isfinite(value) else -math.inf


def _rank_key(row: dict) -> tuple:
    # Combined score first, then the objectives, then the name: a stable, documented order.
    return (
        -_num(row.get(COMBINED.name)),
        *(-_num(row.get(o.name)) for o in OBJECTIVES),
        str(row.get("candidate")),
    )


def sort_by_combined(rows: list[dict]) -> list[dict]:
    """Rows by combined score, best first (ties: each objective, then candidate name)."""
    return sorted(rows, key=_rank_key)


def best_candidate(rows: list[dict]) -> dict | None:
    """The edited candidate (base excluded) with the highest combined score; None if there is none."""
    edited = [r for r in rows if r.get("kind") != BASE and COMBINED.name in r]
    return sort_by_combined(edited)[0] if edited else None


def split_front(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(every row with `on_front` set, the front sorted by combined score)."""
    on = set(pareto_front(rows))
    marked = [{**r, ON_FRONT: i in on} for i, r in enumerate(rows)]
    return marked, sort_by_combined([r for r in marked if r[ON_FRONT]])
