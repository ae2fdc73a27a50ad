"""How many trials and merge-eval actors fit the cluster at once.

Every R-SFT worker and every merge-eval actor must be schedulable at the same time: a trial
waits on actors, so an actor that can never start would hang the sweep. The plan checks every
resource the two kinds of worker ask for (CPU, GPU and the custom `eval_resource`) against the
cluster's totals from `ray.cluster_resources()`.

A trial itself is only a coordinator (it starts R-SFT, then waits on actors), so its own
reservation takes no CPU that a worker or an actor needs: TRIAL_RESOURCES hold none. (With a
`{"CPU": 0.01}` trial, 2 CPUs would not fit it + a 1-CPU worker + a 1-CPU actor, and shaving the
worker to 0.99 CPU would cost it an OpenMP thread wherever rsft_cpus is a whole number above 1.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mm4ke_ray.config import ResourcesConfig
from mm4ke_ray.errors import UserError

# A CPU-free trial reservation: Tune refuses an all-zero request, 1 MiB of Ray's logical
# "memory" is a non-empty one. (Checked: such a trial can wait on a task that needs every CPU.)
TRIAL_RESOURCES: dict[str, float] = {"CPU": 0, "memory": 1 << 20}
_EPS = 1e-9


def trial_resources(cfg: ResourcesConfig, runner: str) -> dict[str, float]:
    """What one Tune trial reserves: TRIAL_RESOURCES, and with runner 'train-local', whose R-SFT
    runs in the trial's own process (Ray Train's local mode), R-SFT's CPUs and GPU too, so that
    Ray gives that process its device (CUDA_VISIBLE_DEVICES) and threads."""
    if runner == "train-local":
        return {**TRIAL_RESOURCES, **rsft_demand(cfg)}
    return dict(TRIAL_RESOURCES)


@dataclass(frozen=True)
class Plan:
    actors: int  # merge-eval actors in the pool
    max_concurrent: int  # Tune trials at once
    rsft_slots: int  # R-SFT workers that fit beside the pool
    pipelined_concurrency: int  # trials that keep R-SFT busy while others are evaluated


def rsft_demand(cfg: ResourcesConfig) -> dict[str, float]:
    """What one R-SFT worker asks Ray for."""
    return {k: v for k, v in {"CPU": cfg.rsft_cpus, "GPU": cfg.rsft_gpus}.items() if v > 0}


def actor_demand(cfg: ResourcesConfig) -> dict[str, float]:
    """What one merge-eval actor asks Ray for (the custom resource, if named, 1 unit)."""
    demand = {k: v for k, v in {"CPU": cfg.eval_cpus, "GPU": cfg.eval_gpus}.items() if v > 0}
    if cfg.eval_resource:
        demand[cfg.eval_resource] = 1.0
    return demand


def _fits(cluster: dict[str, float], demand: dict[str, float]) -> int:
    """How many copies of `demand` the cluster's totals hold (an empty demand: unlimited)."""
    counts = [math.floor(cluster.get(k, 0.0) / v + _EPS) for k, v in demand.items() if v > 0]
    return min(counts) if counts else 1 << 30


def _auto_actors(cfg: ResourcesConfig, cluster: dict[str, float]) -> int:
    if cfg.eval_resource:
        # Dedicated evaluation nodes: one actor per unit of the resource they advertise.
        return int(cluster.get(cfg.eval_resource, 0.0) + _EPS)
    # Shared nodes: pair every R-SFT worker with one actor (equal pools); at least one actor.
    pair = {k: rsft_demand(cfg).get(k, 0.0) + actor_demand(cfg).get(k, 0.0) for k in ("CPU", "GPU")}
    return max(1, _fits(cluster, pair))


def plan_resources(
    cfg: ResourcesConfig, cluster: dict[str, float], candidates_per_trial: int = 1
) -> Plan:
    """Derive pool size and trial concurrency from `ray.cluster_resources()`.

    `candidates_per_trial` (merge candidates evaluated per R-SFT delta) sizes
    `pipelined_concurrency`: R-SFT slots plus the trials needed to keep every actor busy while
    those slots train the next deltas. `max_concurrent: auto` stays at the R-SFT slots (a
    seeded sweep on one machine then repeats exactly); set it explicitly to pipeline.
    """
    if cfg.eval_resource and cluster.get(cfg.eval_resource, 0.0) < 1:
        raise UserError(
            f"resources.eval_resource: the cluster has no '{cfg.eval_resource}' resource; start the evaluation "
            f"nodes with --resources '{{\"{cfg.eval_resource}\": N}}' (cluster/README.md) or unset it"
        )
    actors = _auto_actors(cfg, cluster) if cfg.eval_actors == "auto" else cfg.eval_actors
    pool = actor_demand(cfg)
    short = {k: v * actors for k, v in pool.items() if cluster.get(k, 0.0) + _EPS < v * actors}
    left = {k: cluster.get(k, 0.0) - pool.get(k, 0.0) * actors for k in ("CPU", "GPU")}
    slots = _fits(left, rsft_demand(cfg))
    if actors < 1 or short or slots < 1:
        have = ", ".join(f"{k}={cluster.get(k, 0.0):g}" for k in sorted({"CPU", "GPU", *pool}))
        raise UserError(
            f"resources: the cluster ({have}) cannot run {actors} merge-eval actor(s) (each {_show(pool)}) "
            f"and one R-SFT worker ({_show(rsft_demand(cfg))}) at once; lower resources.eval_actors or the "
            "per-worker amounts, or add nodes"
        )
    pipelined = slots + math.ceil(actors / max(1, candidates_per_trial))
    # Beyond R-SFT slots + actors, extra trials could only wait: cap an explicit value there.
    concurrent = slots if cfg.max_concurrent == "auto" else min(cfg.max_concurrent, slots + actors)
    return Plan(
        actors=actors, max_concurrent=concurrent, rsft_slots=slots, pipelined_concurrency=pipelined
    )


def _show(demand: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in demand.items()) or "nothing"
