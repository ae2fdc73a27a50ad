"""How many trials and merge-eval actors fit the cluster at once.

Every R-SFT worker and every merge-eval actor must be schedulable at the same time: a trial
waits on actors, so an actor that can never start would hang the sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mm4ke_ray.config import ResourcesConfig
from mm4ke_ray.errors import UserError


@dataclass(frozen=True)
class Plan:
    actors: int
    max_concurrent: int


def plan_resources(cfg: ResourcesConfig, cluster: dict[str, float]) -> Plan:
    """Derive pool size and trial concurrency from `ray.cluster_resources()`."""
    gpu_mode = cfg.rsft_gpus > 0
    unit, rsft_cost = ("GPU", cfg.rsft_gpus) if gpu_mode else ("CPU", cfg.rsft_cpus)
    eval_cost = cfg.eval_gpus if gpu_mode else cfg.eval_cpus
    available = cluster.get(unit, 0.0)
    if cfg.eval_resource:
        dedicated = cluster.get(cfg.eval_resource, 0.0)
        if dedicated < 1:
            raise UserError(f"resources.eval_resource: the cluster has no '{cfg.eval_resource}' resource")
        actors = int(dedicated) if cfg.eval_actors == "auto" else cfg.eval_actors
    elif cfg.eval_actors == "auto":
        actors = max(1, math.floor(available / (rsft_cost + eval_cost))) if rsft_cost + eval_cost else 1
    else:
        actors = cfg.eval_actors
    left = available - actors * eval_cost
    fit = math.floor(left / rsft_cost + 1e-9) if rsft_cost else 1
    if fit < 1 or cluster.get("CPU", 0) < cfg.eval_cpus * actors:
        raise UserError(
            f"resources: the cluster ({unit}={available:g}) cannot run {actors} merge-eval actor(s) "
            f"({eval_cost:g} {unit} each) and one R-SFT worker ({rsft_cost:g} {unit}) at once; "
            "lower resources.eval_actors or the per-worker amounts"
        )
    concurrent = fit if cfg.max_concurrent == "auto" else min(cfg.max_concurrent, fit)
    return Plan(actors=actors, max_concurrent=concurrent)
