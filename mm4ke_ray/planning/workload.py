"""What a sweep config asks for, in counts: trials, R-SFT updates, candidates, concurrency.

Everything here is read from the config (and the edit set's record count); nothing is timed.
The candidate count per delta comes from the sweep's own `merge_candidates`, so the planner
follows the sweep if that rule changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mm4ke_ray.config import Param, SweepConfig
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.evidence import min_sign_items
from mm4ke_ray.evaluate.rung_plan import halving_cost, plan_rungs
from mm4ke_ray.search.resources import plan_resources


@dataclass(frozen=True)
class Workload:
    trials: int
    records: int
    candidates_per_delta: int
    epochs_mean: float
    epochs_max: int
    steps_mean: float  # K
    steps_max: int
    layers: tuple[int, ...]  # every layer the search may pick
    general_tasks: tuple[str, ...]
    general_limit: int | float | None
    eval_batch_size: int
    concurrent_trials: int  # Tune trials at once (the sweep's own resource plan)
    rsft_slots: int
    eval_actors: int
    rsft_gpus: float
    eval_gpus: float
    runner: str
    # evaluation.fidelity on: a delta's evaluation in full evaluations, (fewest, most); None: off
    halving_cost: tuple[float, float] | None = None
    # ... and its lower rungs by the edit records (`RungPlan.describe`: raised, skipped and why)
    halving_rungs: tuple[str, ...] = ()

    @property
    def updates_max(self) -> int:
        """R-SFT updates of one trial at most: E·N·K (early stopping only lowers it)."""
        return self.epochs_max * self.records * self.steps_max

    @property
    def updates_expected(self) -> float:
        """E·N·K at the mean E and K of the space, without early stopping (the demo's runs
        rarely stop early: later edits push earlier ones back above τ)."""
        return self.epochs_mean * self.records * self.steps_mean

    @property
    def candidates(self) -> int:
        return self.trials * self.candidates_per_delta

    def as_json(self) -> dict:
        return {**asdict(self), "updates_max_per_trial": self.updates_max,
                "updates_expected_per_trial": self.updates_expected, "candidates": self.candidates}


def _mean_max(p: Param) -> tuple[float, int]:
    values = [int(v) for v in p.choices] if p.choices is not None else list(range(int(p.low), int(p.high) + 1))
    return sum(values) / len(values), max(values)


def candidates_per_delta(config: SweepConfig) -> int:
    """How many merge candidates the sweep evaluates per R-SFT delta (sampled + pure + extras)."""
    from mm4ke_ray.search.space import merge_candidates

    space = config.search.space
    # A sampled point inside the space and off (0, 0), as Optuna's would almost always be.
    alpha, sparsity = (sum(p.bounds()) / len(p.bounds()) for p in (space.alpha, space.sparsity))
    return len(merge_candidates(config.search, alpha, sparsity, config.merge.extra_candidates, seed=0))


def cluster_resources(config: SweepConfig, gpus: int, cpus: float | None) -> dict[str, float]:
    """The Ray cluster a plan assumes: `gpus` GPUs and `cpus` CPUs (default: this machine's count
    without GPUs; with GPUs, max(rsft_cpus, eval_cpus) per GPU, what the workers ask for). With
    `resources.eval_resource`, half the GPUs are taken to be on evaluation nodes."""
    import os

    r = config.resources
    if cpus is None:
        cpus = float(os.cpu_count() or 1) if gpus == 0 else gpus * max(r.rsft_cpus, r.eval_cpus)
    out = {"CPU": float(cpus), "GPU": float(gpus)}
    if r.eval_resource:  # dedicated evaluation nodes: assume one per GPU asked for by the actors
        out[r.eval_resource] = float(max(1, gpus // 2))
    return out


def workload(config: SweepConfig, records: int, gpus: int = 0, cpus: float | None = None) -> Workload:
    """The counts of `config` on a cluster of `gpus` GPUs (0: CPUs only)."""
    if gpus > 0 and config.resources.rsft_gpus == 0 and config.resources.eval_gpus == 0:
        raise UserError(f"--gpus {gpus}: this config's workers ask for no GPU (resources.rsft_gpus and "
                        "eval_gpus are 0); set them, e.g. --set resources.rsft_gpus=1 --set resources.eval_gpus=1, "
                        "or plan with --gpus 0")
    if gpus == 0 and (config.resources.rsft_gpus > 0 or config.resources.eval_gpus > 0):
        config = config.with_overrides(**{"resources.rsft_gpus": 0, "resources.eval_gpus": 0})
    per_delta = candidates_per_delta(config)
    plan = plan_resources(config.resources, cluster_resources(config, gpus, cpus), per_delta)
    space = config.search.space
    e_mean, e_max = _mean_max(space.epochs)
    k_mean, k_max = _mean_max(space.steps)
    return Workload(
        trials=config.search.num_trials, records=records, candidates_per_delta=per_delta,
        epochs_mean=e_mean, epochs_max=e_max, steps_mean=k_mean, steps_max=k_max, layers=tuple(space.layers()),
        general_tasks=tuple(config.evaluation.general_tasks), general_limit=config.evaluation.general_limit,
        eval_batch_size=config.evaluation.batch_size,
        concurrent_trials=min(plan.max_concurrent, config.search.num_trials), rsft_slots=plan.rsft_slots,
        eval_actors=plan.actors, rsft_gpus=config.resources.rsft_gpus, eval_gpus=config.resources.eval_gpus,
        runner=config.search.rsft.runner, **_halving(config, per_delta, records),
    )


def _halving(config: SweepConfig, per_delta: int, records: int) -> dict:
    """With halving on: `halving_cost` over the rungs the sweep evaluates, their fractions taken
    from the edit records (raised to the sign test's minimum, `rung_plan.py`), and the rungs'
    description. The documents of lm-eval tasks are only known when the sweep starts."""
    fid = config.evaluation.fidelity
    if not fid.enabled or fid.rungs <= 1 or records < 1:
        return {}
    plan = plan_rungs(records, {}, fid.rungs, fid.reduction_factor, seed=0, min_items=min_sign_items(fid.error_rate))
    fractions = [len(plan.records(r)) / records for r in plan.evaluated()]
    return {"halving_cost": halving_cost(per_delta, fid.rungs, fid.reduction_factor, fractions),
            "halving_rungs": tuple(plan.describe())}
