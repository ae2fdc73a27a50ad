"""Pareto math over candidate rows, beside the objectives it ranks: the non-dominated set,
hypervolume, the combined-score ranking and the best pick.

Minimums (`objectives.min_edit_score` / `min_general_score`, as `{objective name: lowest value}`)
make a candidate below any of them infeasible: it is kept and shown (greyed), but it is never on
the front nor the best pick, as Optuna's constrained `best_trials` would not count it either.

Used alike by the sweep (its summary), tracking (the `pareto/` artifacts and tags), `pareto` and
`export --pick best`. Candidates become trials of a throwaway in-memory Optuna study, so
"non-dominated" means exactly what Optuna's `Study.best_trials` means. The hypervolume of two
objectives is a sort and a sum (`hypervolume_2d`), not Optuna's internal `_hypervolume`.
"""

from __future__ import annotations

import math

import optuna

from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
from mm4ke_ray.schema import BASE

ON_FRONT = "on_front"  # the column that marks a row on the front
FEASIBLE = "feasible"  # the column that marks a row meeting the minimums (set only when there are some)
MIN_PREFIX = "min_"  # parent-run param of a minimum: "min_" + objective name, as search/constraints' keys


def _values(row: dict) -> list[float] | None:
    vals = [row.get(o.name) for o in OBJECTIVES]
    if any(v is None or not math.isfinite(v) for v in vals):
        return None
    return [float(v) for v in vals]


def feasible(row: dict, mins: dict[str, float] | None) -> bool:
    """Whether `row` meets every minimum (a missing or non-finite value does not; no minimums: True).
    Same rule as the sampler's constraints (search/constraints.py: value >= minimum)."""
    return row.get(FEASIBLE, True) is not False and all(
        isinstance(v := row.get(name), int | float) and math.isfinite(v) and v >= low
        for name, low in (mins or {}).items()
    )


def minimums_from_params(params: dict) -> dict[str, float]:
    """The minimums a sweep recorded in its parent run's params (`min_edit_score`, ...); {} if none."""
    out = {}
    for o in OBJECTIVES:
        value = params.get(MIN_PREFIX + o.name)
        if value not in (None, ""):
            out[o.name] = float(value)
    return out


def describe_minimums(mins: dict[str, float]) -> str:
    """'objectives.min_edit_score 0.8, objectives.min_general_score 0.9' (for titles and errors)."""
    return ", ".join(f"objectives.{MIN_PREFIX}{name} {low:g}" for name, low in mins.items())


def pareto_front(rows: list[dict], mins: dict[str, float] | None = None) -> list[int]:
    """Indices of the non-dominated feasible rows (all objectives maximised), in input order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[o.direction for o in OBJECTIVES])
    for i, row in enumerate(rows):
        vals = _values(row)
        if vals is not None and feasible(row, mins):
            study.add_trial(optuna.trial.create_trial(values=vals, user_attrs={"row": i}))
    return sorted(t.user_attrs["row"] for t in study.best_trials)


def hypervolume(rows: list[dict], reference: tuple[float, ...] = (0.0, 0.0)) -> float:
    """Area dominated by the rows' objectives above `reference` (objectives maximised)."""
    points = [v for v in map(_values, rows) if v is not None and all(a > r for a, r in zip(v, reference, strict=True))]
    return hypervolume_2d(points, reference) if points else 0.0


def hypervolume_2d(points: list[list[float]], reference: tuple[float, ...]) -> float:
    """Area dominated by two-objective `points` (both maximised, each above `reference`): sorted by
    the first objective, best first, each point adds the strip it raises the second above the best
    so far."""
    if len(reference) != 2:
        raise ValueError(f"hypervolume_2d takes two objectives, got a reference of {len(reference)}")
    (rx, best_y), area = reference, 0.0
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            area += (x - rx) * (y - best_y)
            best_y = y
    return area


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


def best_candidate(rows: list[dict], mins: dict[str, float] | None = None) -> dict | None:
    """The feasible edited candidate (base excluded) with the highest combined score; None if there
    is none (a row already marked `feasible: False` counts as infeasible too)."""
    edited = [r for r in rows if r.get("kind") != BASE and COMBINED.name in r and feasible(r, mins)]
    return sort_by_combined(edited)[0] if edited else None


def split_front(rows: list[dict], mins: dict[str, float] | None = None) -> tuple[list[dict], list[dict]]:
    """(every row with `on_front` set, and `feasible` too when there are minimums; the front
    sorted by combined score)."""
    on = set(pareto_front(rows, mins))
    marked = [{**r, ON_FRONT: i in on, **({FEASIBLE: feasible(r, mins)} if mins else {})} for i, r in enumerate(rows)]
    return marked, sort_by_combined([r for r in marked if r[ON_FRONT]])
