"""An earlier sweep's candidates as points for the new study (`--warm-start`).

Each candidate row read back from MLflow becomes `{"params", "values", "user_attrs"}` over the
new search space: its searched parameters, its objectives. A row is skipped (and counted) when a
parameter the new space fixes had another value there, a searched one is missing, or an
objective is not a finite number; a value outside a searched range is refused by Optuna itself
when told (`CandidateAwareOptunaSearch.tell_warm_start`) and counted the same way.

The candidates of one earlier R-SFT run share its configuration: the first of them (its sampled
point when there is one) is told as that configuration's own trial, the others as its extra
points (`EXTRA_ATTR`), exactly as this sweep tells its own trials, so the sampler's start-up and
the R-SFT parameters' model see each earlier configuration once.
"""

from __future__ import annotations

import math

from mm4ke_ray.config import SearchConfig
from mm4ke_ray.evaluate.scores import OBJECTIVES
from mm4ke_ray.schema import SAMPLED
from mm4ke_ray.search.space import split_space
from mm4ke_ray.search.startup import EXTRA_ATTR


def _same(a, b) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _point(row: dict, searched: dict, fixed: dict) -> dict | None:
    if any(not _same(row.get(k), v) for k, v in fixed.items()):
        return None
    if any(row.get(k) is None for k in searched):
        return None
    values = [row.get(o.name) for o in OBJECTIVES]
    if any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
        return None
    return {"params": {k: row[k] for k in searched}, "values": [float(v) for v in values]}


def warm_points(rows: list[dict], search: SearchConfig, source: str) -> tuple[list[dict], int]:
    """(points to tell, rows skipped) for an earlier sweep's candidate `rows` (see the module doc)."""
    searched, fixed = split_space(search)
    points, skipped, leads = [], 0, set()
    # Its sampled point leads its R-SFT run's group; other kinds follow.
    for row in sorted(rows, key=lambda r: r.get("kind") != SAMPLED):
        point = _point(row, searched, fixed)
        if point is None:
            skipped += 1
            continue
        group = f"{source}/{row.get('trial_id') or row.get('candidate')}"
        if group in leads:
            point["user_attrs"] = {EXTRA_ATTR: group}
        leads.add(group)
        points.append(point)
    return points, skipped
