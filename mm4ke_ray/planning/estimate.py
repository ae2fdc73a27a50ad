"""A sweep's wall time and GPU-hours from its workload, unit costs and fixed costs.

The sweep runs `concurrent_trials` trials at a time (its own resource plan, `search/resources.py`);
a trial holds its slot from its R-SFT worker's start until its last candidate is evaluated, so
trials run in waves: start-up, R-SFT, then the wave's candidates shared by the merge-eval actors.
Before the first wave Ray starts (locally) and the pool loads the model and scores the base;
Tune, checkpoints and MLflow cost a little per trial and once per sweep (`fixed_costs.py`).
Expected figures take the mean E and K of the space (no early stopping); the upper bound takes
E·N·K at their maxima and the costliest layer. With successive halving on, how much evaluation a
delta costs depends on how many candidates its rungs prune, which no plan knows: the expected
figure assumes it breaks even (as without halving), the upper bound that nothing is pruned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mm4ke_ray.planning.costs import UnitCosts
from mm4ke_ray.planning.fixed_costs import FixedCosts
from mm4ke_ray.planning.workload import Workload


@dataclass(frozen=True)
class Phase:
    name: str
    count: float  # how many times it happens (on the critical path)
    each_s: float  # seconds each (expected)
    wall_s: float  # its share of the sweep's wall time (expected)
    upper_s: float  # the same at the upper bound
    source: str  # probe, stored, sweep.json


@dataclass
class Estimate:
    phases: list[Phase]
    wall_s: float
    upper_wall_s: float
    gpus: int
    cpus: float
    busy_gpu_hours: float
    upper_busy_gpu_hours: float
    basis: list[str] = field(default_factory=list)

    @property
    def billed_gpu_hours(self) -> float:
        """Every GPU of the cluster for the whole sweep (what a rented cluster costs)."""
        return self.gpus * self.wall_s / 3600

    @property
    def upper_billed_gpu_hours(self) -> float:
        return self.gpus * self.upper_wall_s / 3600

    def as_json(self) -> dict:
        return {**asdict(self), "billed_gpu_hours": self.billed_gpu_hours,
                "upper_billed_gpu_hours": self.upper_billed_gpu_hours,
                "cpu_hours": self.cpus * self.wall_s / 3600}


def _eval_rounds(work: Workload) -> float:
    """Rounds of candidate evaluation on the critical path: per wave, its trials' candidates
    spread over the actors (each trial sends its candidates round-robin from its own offset)."""
    c, actors = max(1, work.concurrent_trials), max(1, work.eval_actors)
    full, last = divmod(work.trials, c)  # arithmetic, not a loop over waves: `plan` answers for any count
    per_wave = math.ceil(c * work.candidates_per_delta / actors)
    return full * per_wave + (math.ceil(last * work.candidates_per_delta / actors) if last else 0)


def estimate(work: Workload, units: UnitCosts, fixed: FixedCosts, gpus: int, cpus: float,
             local_ray: bool, source: str) -> Estimate:
    """Expected and upper-bound wall time and GPU-hours of the sweep `work` describes."""
    waves = math.ceil(work.trials / max(1, work.concurrent_trials))
    mean_update = sum(units.update_s[x] for x in work.layers) / len(work.layers)
    worst_update = max(units.update_s[x] for x in work.layers)
    rsft = work.updates_expected * mean_update
    rsft_upper = work.updates_max * worst_update
    startup = fixed.trial_startup_s.get(work.runner, max(fixed.trial_startup_s.values()))
    rounds = _eval_rounds(work)
    candidate = units.candidate_s + fixed.dispatch_per_candidate_s
    # Halving on: at most every candidate reaches the full rung, each item scored once
    # (`rung_plan.halving_cost`, with reuse: what evaluating everyone in full costs).
    eval_upper = work.halving_cost[1] / work.candidates_per_delta if work.halving_cost else 1.0
    per_trial = fixed.driver_per_trial_s.get(work.runner, max(fixed.driver_per_trial_s.values()))
    ray_start = fixed.ray_start_s if local_ray else 0.0
    here = "probe" if fixed.probed else "bench"
    # Runner 'train-local': Tune keeps the trial process (reuse_actors) and the process keeps its
    # loaded model (rsft_to_folder's keep_loaded), so start, imports and load are paid by the
    # first wave only.
    starts = 1 if work.runner == "train-local" else waves
    start_total = starts * (startup + units.worker_load_s)
    phases = [
        Phase("Ray start", 1, ray_start, ray_start, ray_start, here if local_ray else "cluster up"),
        Phase("eval pool start", 1, units.pool_start_s, units.pool_start_s, units.pool_start_s, source),
        Phase("trial start-up", waves, start_total / waves, start_total, start_total,
              f"{here}+{source}" if here != source else here),
        Phase("R-SFT", waves, rsft, waves * rsft, waves * rsft_upper, source),
        Phase("eval rounds", rounds, candidate, rounds * candidate, rounds * candidate * eval_upper, source),
        Phase("sweep start/end", 1, fixed.driver_per_sweep_s, fixed.driver_per_sweep_s, fixed.driver_per_sweep_s,
              "bench"),
        Phase("Tune/MLflow", work.trials, per_trial, work.trials * per_trial, work.trials * per_trial, "bench"),
    ]
    wall = sum(p.wall_s for p in phases)
    upper = sum(p.upper_s for p in phases)
    # GPU time spent computing: R-SFT on the workers, candidates and the base reference on the actors.
    busy = work.trials * rsft * work.rsft_gpus + work.candidates * units.candidate_s * work.eval_gpus
    busy_upper = (work.trials * rsft_upper * work.rsft_gpus
                  + work.candidates * units.candidate_s * eval_upper * work.eval_gpus)
    pool = units.pool_start_s * work.eval_actors * work.eval_gpus
    return Estimate(phases=phases, wall_s=wall, upper_wall_s=upper, gpus=gpus, cpus=cpus,
                    busy_gpu_hours=(busy + pool) / 3600, upper_busy_gpu_hours=(busy_upper + pool) / 3600,
                    basis=[*units.basis, f"fixed costs: {fixed.basis}"])
