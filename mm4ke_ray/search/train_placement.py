"""The placement group of a trial's R-SFT worker, released when Ray Train leaves it behind.

Ray Train (v2) starts the training function on its worker and then waits for that call's reply
outside the error handling of its start-up. A worker that dies in between (killed, lost with its
node) fails the run with a `ControllerError` and the controller gives up *without* removing the
worker group's placement group. Ray Train's detached `PlacementGroupCleaner` would remove it once
the controller is gone, but it asks the dashboard's State API whether the controller lives, and a
local Ray started without the dashboard (ours: search/driver.py) has none. The group then holds
the worker's CPU/GPU for the rest of the sweep, and the retried trial waits for it forever (Ray
Train retries a worker group that cannot start without limit by default).

So the training function records its placement group under a key of the trial's choosing (Ray's
internal key-value store: no dashboard needed; one entry per group, as Ray Train may start the
group again within one `fit()`), and the trial removes those groups after `fit()`, whatever its
outcome: by then the run is over, and a group Ray Train already removed is left alone.
"""

from __future__ import annotations

import uuid

import ray
from ray.experimental import internal_kv
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group_table,
    remove_placement_group,
)

_NAMESPACE = "mm4ke-rsft-placement"


def new_placement_key() -> str:
    """A key for one `fit()` call: a retried trial records under a new one."""
    return uuid.uuid4().hex


def record_placement_group(key: str) -> None:
    """In the Ray Train worker: remember the placement group this worker runs in."""
    group = get_current_placement_group()
    if group is not None:
        internal_kv._internal_kv_put(f"{key}/{group.id.hex()}", b"", namespace=_NAMESPACE)


def release_placement_group(key: str) -> int:
    """In the trial, after `fit()`: remove the recorded groups that still exist.

    Returns how many were removed (groups Ray Train had left behind).
    """
    removed = 0
    for entry in internal_kv._internal_kv_list(f"{key}/", namespace=_NAMESPACE):
        internal_kv._internal_kv_del(entry, namespace=_NAMESPACE)
        group_id = entry.decode().rsplit("/", 1)[1]
        group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id)))
        if placement_group_table(group).get("state") not in (None, "REMOVED"):
            remove_placement_group(group)
            removed += 1
    return removed
