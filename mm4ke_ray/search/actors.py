"""The merge-eval actor pool: long-lived Ray actors, each holding one resident base model.

Fault tolerance: Ray restarts a dead actor (`max_restarts`) and re-sends the calls that were in
flight or queued on it (`max_task_retries`), so a killed actor loses no candidate and, because a
trial waits for every call exactly once, doubles none. A restarted actor re-runs its constructor
with the arguments it was created with; the base reference (base model's locality predictions,
general scores and metrics) is computed once per sweep and kept in a small `ReferenceStore`
actor, so a restart only reloads the model and never re-evaluates the base.
"""

from __future__ import annotations

import os
import uuid
from typing import NamedTuple

import psutil
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mm4ke_ray.evaluate.candidate import CandidateEvaluator, EvalSettings, Reference
from mm4ke_ray.quiet import quiet_worker

RESTARTS = 3  # per actor; also the retries of each call that a death interrupts


@ray.remote(num_cpus=0)
class ReferenceStore:
    """Holds the sweep's base reference for actors that (re)start."""

    def __init__(self, settings: EvalSettings | None = None):
        self.settings = settings
        self.reference: Reference | None = None

    def get_settings(self) -> EvalSettings:
        return self.settings

    def put(self, reference: Reference) -> None:
        self.reference = reference

    def get(self) -> Reference | None:
        return self.reference


@ray.remote
class MergeEvalActor:
    """Wraps a CandidateEvaluator. Restarted by Ray if its process dies; calls are retried."""

    def __init__(self, settings: EvalSettings | None = None, store=None, reference: Reference | None = None,
                 store_name: str | None = None):
        quiet_worker()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        if store_name is not None:  # the pool's way: constructor arguments stay small (see start_pool)
            store = ray.get_actor(store_name)
        if settings is None:
            settings = ray.get(store.get_settings.remote())
        if reference is None and store is not None:
            reference = ray.get(store.get.remote())
        self.evaluator = CandidateEvaluator(settings, reference)
        if reference is None and store is not None:
            ray.get(store.put.remote(self.evaluator.reference))
        self.count = 0

    def reference(self) -> Reference:
        return self.evaluator.reference

    def evaluate(self, delta: dict, alpha: float, sparsity: float, seed: int = 0, rung: int | None = None,
                 prior: dict | None = None) -> dict:
        """One candidate's metrics; at `rung` (successive halving) on that rung's subset only, the
        items scored at the candidate's rung below (`prior`) read back instead of scored again."""
        self.count += 1
        return self.evaluator.evaluate(delta, alpha, sparsity, seed=seed, rung=rung, prior=prior)

    def rung_plan(self):
        """The sweep's rung plan (`rung_plan.RungPlan`: items per rung, skipped rungs)."""
        return self.evaluator.rung_plan()

    def stats(self) -> dict:
        """Evaluations done by this incarnation, its resident memory, pid and whether it was restarted."""
        return {"count": self.count, "rss_bytes": psutil.Process().memory_info().rss, "pid": os.getpid(),
                "restarted": ray.get_runtime_context().was_current_actor_reconstructed}


class Pool(NamedTuple):
    actors: list
    reference: Reference
    store: object  # the ReferenceStore handle; the driver holds it for the whole sweep


def start_pool(settings: EvalSettings, size: int, cpus: float, gpus: float, resource: str | None) -> Pool:
    """Start `size` actors; the first computes the base reference, the others (and restarts) reuse it."""
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": RESTARTS, "max_task_retries": RESTARTS}
    if resource:
        options["resources"] = {resource: 1}
    # The store lives on the driver's node, which the sweep cannot outlive anyway. Anywhere else a
    # lost node would take the reference with it, and every merge-eval actor Ray restarts after
    # that loss would fail in its constructor (a dead actor for good, every later trial failing).
    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # The settings (records, task configs) live in the store too: passed to each actor they would
    # be put in the object store, and a restart then depends on that object staying alive (Ray
    # warns, ray-project/ray#53727). The actors' only constructor argument is the store's name
    # (a handle as argument counts as an object-store argument too).
    store_name = f"mm4ke-reference-store-{uuid.uuid4().hex}"
    store = ReferenceStore.options(scheduling_strategy=driver_node, name=store_name).remote(settings)
    first = MergeEvalActor.options(**options).remote(store_name=store_name)
    reference = ray.get(first.reference.remote())
    others = [MergeEvalActor.options(**options).remote(store_name=store_name) for _ in range(size - 1)]
    return Pool([first, *others], reference, store)


def stop_pool(pool: Pool) -> None:
    """Kill the pool's actors (and the reference store) so their resources return to Ray."""
    for actor in [*pool.actors, pool.store]:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
