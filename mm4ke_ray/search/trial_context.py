"""What every trial of a sweep shares (the driver builds it once; each trial reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from mm4ke_ray.config import SearchConfig
from mm4ke_ray.evaluate.candidate import EvalSettings


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares: resolved settings, the search config and the actor pool."""

    settings: EvalSettings
    search: SearchConfig
    extra_candidates: int
    runner: str  # "train" or "task"
    rsft_cpus: float
    rsft_gpus: float
    storage_path: str
    actors: tuple
    system_metrics_s: float | None = None  # tracking.system_metrics: sample every this many seconds; None: off
    fidelity_error_rate: float = 0.05  # evaluation.fidelity.error_rate (rungs and factor are in `settings`)
    rungs_path: str | None = None  # folder of the trials' rung records (rung_store.py); None: not kept
    front_key: str | None = None  # where the driver publishes the sweep's front (front_board.py); None: not used
    merge_candidates: str = "random"  # merge.candidates: random extras, or a per-delta surrogate (surrogate.py)
    merge_grid: int = 6  # merge.grid: points per axis of the surrogate's α × sparsity grid
