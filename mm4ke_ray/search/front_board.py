"""The sweep's full-fidelity front so far, published where its trials' halving can read it.

Successive halving drops a candidate whose lower-rung scores an exact full-fidelity result of
the sweep already beats (`fidelity.beaten_by_exact`): the base model, earlier trials' candidates,
an earlier sweep's (--warm-start). The driver publishes the non-dominated set of those after
every trial; a trial reads it once, when its candidates' evaluation starts. It lives in Ray's
internal key-value store (on the cluster's head, no extra actor; readable from any worker).

What a trial sees depends on which trials finished before it: with one trial at a time that is
fixed by the seed; with several at once, by their timing (as Optuna's suggestions are then).
"""

from __future__ import annotations

import json
import uuid

from ray.experimental import internal_kv

from mm4ke_ray.evaluate.pareto_front import pareto_front
from mm4ke_ray.evaluate.scores import OBJECTIVES

_NAMESPACE = "mm4ke-front"


def new_front_key() -> str:
    return f"front-{uuid.uuid4().hex}"


def front_points(rows: list[dict]) -> list[list[float]]:
    """The non-dominated (edit, general) points of `rows` with finite objectives
    (`pareto.pareto_front`), each point once, highest edit score first."""
    points = {tuple(float(rows[i][o.name]) for o in OBJECTIVES) for i in pareto_front(rows)}
    return [list(p) for p in sorted(points, key=lambda p: [-v for v in p])]


def publish_front(key: str, rows: list[dict]) -> int:
    """Publish the non-dominated points of `rows` under `key`; how many."""
    points = front_points(rows)
    internal_kv._internal_kv_put(key, json.dumps(points).encode(), overwrite=True, namespace=_NAMESPACE)
    return len(points)


def read_front(key: str | None) -> list[list[float]]:
    """The points published under `key` (none yet, or no key: [])."""
    if key is None:
        return []
    raw = internal_kv._internal_kv_get(key, namespace=_NAMESPACE)
    try:
        points = json.loads(raw) if raw else []
    except ValueError:
        return []
    # Read back as absent unless it is what `publish_front` writes: a list of [edit, general] numbers.
    ok = isinstance(points, list) and all(
        isinstance(p, list) and len(p) == len(OBJECTIVES) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)
        for p in points)
    return points if ok else []


def drop_front(key: str) -> None:
    internal_kv._internal_kv_del(key, namespace=_NAMESPACE)
